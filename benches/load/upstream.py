#!/usr/bin/env python3
"""Built-in minimal static upstream for the load harness, used when nginx is not installed.

`python3 upstream.py PORT` answers every request on 127.0.0.1:PORT with the same small 200 JSON
body, HTTP/1.1 keep-alive, no parsing beyond finding the end of each request (Content-Length
bodies are skipped). Standard library only. Much slower than nginx: the harness notes it.
"""

import asyncio
import sys

BODY = b'{"ok":true}\n'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)


class Static(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buf = b""
        self.skip = 0

    def data_received(self, data):
        buf = self.buf + data
        out = []
        while True:
            if self.skip:
                n = min(self.skip, len(buf))
                buf = buf[n:]
                self.skip -= n
                if self.skip:
                    break
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end].lower()
            buf = buf[end + 4 :]
            i = head.find(b"\r\ncontent-length:")
            if i >= 0:
                value = head[i + 17 :].split(b"\r\n", 1)[0]
                try:
                    self.skip = int(value.strip())
                except ValueError:
                    self.transport.close()
                    return
            out.append(RESPONSE)
        self.buf = buf
        if out:
            self.transport.write(b"".join(out))


async def main(port):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Static, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main(int(sys.argv[1])))
    except KeyboardInterrupt:
        pass
