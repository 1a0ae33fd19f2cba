#!/usr/bin/env python3
"""HTTP + WebSocket upstream for the soak (standard library only).

`python3 upstream.py PORT` listens on 127.0.0.1:PORT and answers:

- a WebSocket handshake (`Upgrade: websocket`) with `101 Switching Protocols`, then echoes every
  text/binary frame unmasked, answers a ping with a pong and a close with a close;
- any other request with 200 and a small JSON body naming the identity the gateway added,
  `{"ok":true,"user":<X-Auth-User-Id or null>,"sid":<X-Auth-Session-Id or null>}`, so the soak
  can check that each protected answer belongs to the token that asked for it (a wrong answer,
  not only a wrong status, fails the soak).

The load harness's upstream (benches/load/upstream.py) answers one fixed body and no upgrades;
this one parses just enough more to do both.
"""

import asyncio
import base64
import hashlib
import json
import struct
import sys

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_accept(key):
    """The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key` (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + WS_GUID).digest())


def ws_frame(opcode, payload):
    """One final, unmasked (server-to-client) frame."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


def parse_frame(buf):
    """(opcode, payload, bytes used) of the first complete frame in buf, or None."""
    if len(buf) < 2:
        return None
    b0, b1 = buf[0], buf[1]
    n = b1 & 0x7F
    i = 2
    if n == 126:
        if len(buf) < 4:
            return None
        n = struct.unpack("!H", buf[2:4])[0]
        i = 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n = struct.unpack("!Q", buf[2:10])[0]
        i = 10
    mask = None
    if b1 & 0x80:
        if len(buf) < i + 4:
            return None
        mask = buf[i : i + 4]
        i += 4
    if len(buf) < i + n:
        return None
    payload = buf[i : i + n]
    if mask:
        payload = bytes(b ^ mask[k % 4] for k, b in enumerate(payload))
    return b0 & 0x0F, payload, i + n


class Upstream(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buf = b""
        self.skip = 0
        self.ws = False

    def data_received(self, data):
        self.buf += data
        if self.ws:
            self.frames()
            return
        out = []
        while not self.ws:
            if self.skip:
                n = min(self.skip, len(self.buf))
                self.buf = self.buf[n:]
                self.skip -= n
                if self.skip:
                    break
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head, self.buf = self.buf[:end], self.buf[end + 4 :]
            headers = {}
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            try:
                self.skip = int(headers.get(b"content-length", b"0"))
            except ValueError:
                self.transport.close()
                return
            if headers.get(b"upgrade", b"").lower() == b"websocket" and b"sec-websocket-key" in headers:
                out.append(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Accept: " + ws_accept(headers[b"sec-websocket-key"]) + b"\r\n\r\n"
                )
                self.ws = True
                break

            def h(name):
                v = headers.get(name)
                return v.decode(errors="replace") if v is not None else None

            body = json.dumps({"ok": True, "user": h(b"x-auth-user-id"), "sid": h(b"x-auth-session-id")}).encode()
            out.append(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
        if out:
            self.transport.write(b"".join(out))
        if self.ws and self.buf:
            self.frames()

    def frames(self):
        while True:
            f = parse_frame(self.buf)
            if f is None:
                return
            opcode, payload, used = f
            self.buf = self.buf[used:]
            if opcode in (1, 2):
                self.transport.write(ws_frame(opcode, payload))
            elif opcode == 9:
                self.transport.write(ws_frame(10, payload))
            elif opcode == 8:
                self.transport.write(ws_frame(8, payload[:2]))
                self.transport.close()
                return


async def main(port):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main(int(sys.argv[1])))
    except KeyboardInterrupt:
        pass
