#!/usr/bin/env python3
"""Fallback load generator for the load harness, used when wrk is not installed.

Closed loop like wrk: C keep-alive connections on one asyncio loop, each sending its next
request as soon as the previous response is complete, for D seconds. Modes as in wrk.lua
(get | login | refresh, with the same environment variables) and the same output: one line
`WRKJSON {...}`. Standard library only; it saturates one core far below wrk's rate, so its
numbers measure the generator more than the target (the harness notes it).

usage: loadgen.py URL --connections C --duration D [--header 'Name: value']...
"""

import argparse
import asyncio
import json
import os
import re
import time
from urllib.parse import urlsplit

TOKEN_RE = re.compile(rb'"refresh_token"\s*:\s*"([^"]+)"')


class Stats:
    def __init__(self):
        self.latencies = []
        self.bytes = 0
        self.errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
        self.broken = 0


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = None
    chunked = False
    close = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        value = value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value:
            chunked = True
        elif name == b"connection" and value == b"close":
            close = True
    body = b""
    if chunked:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    elif length:
        body = await reader.readexactly(length)
    return status, body, len(head) + len(body), close


async def connection(url, args, stats, pool, deadline):
    host, port = url.hostname, url.port or 80
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    extra = "".join(f"{h}\r\n" for h in args.header)
    mode = os.environ.get("BENCH_MODE", "get")
    login_body = os.environ.get("BENCH_BODY", "").encode()
    token = pool.pop() if mode == "refresh" and pool else None
    reader = writer = None
    while time.monotonic() < deadline:
        if writer is None:
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                stats.errors["connect"] += 1
                await asyncio.sleep(0.01)
                continue
        if mode == "login":
            body = login_body
        elif mode == "refresh":
            body = b'{"refresh_token":"' + (token or "pool-exhausted").encode() + b'"}'
        else:
            body = None
        if body is None:
            req = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode()
        else:
            req = (
                f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body
        start = time.perf_counter()
        try:
            writer.write(req)
            status, resp, size, close = await asyncio.wait_for(read_response(reader), 2.0)
        except asyncio.TimeoutError:
            stats.errors["timeout"] += 1
            writer.close()
            writer = None
            continue
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            stats.errors["read"] += 1
            writer.close()
            writer = None
            continue
        stats.latencies.append(time.perf_counter() - start)
        stats.bytes += size
        if status >= 400:
            stats.errors["status"] += 1
        if mode == "refresh":
            m = TOKEN_RE.search(resp) if status == 200 else None
            if m:
                token = m.group(1).decode()
            else:
                stats.broken += 1
                token = pool.pop() if pool else None
        if close:
            writer.close()
            writer = None
    if writer is not None:
        writer.close()


def percentile(sorted_values, p):
    if not sorted_values:
        return 0
    i = min(len(sorted_values) - 1, max(0, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[i]


async def run(args):
    url = urlsplit(args.url)
    stats = Stats()
    pool = []
    if os.environ.get("BENCH_MODE") == "refresh":
        with open(os.environ["BENCH_TOKENS"]) as f:
            pool = [line.strip() for line in f if line.strip()]
    start = time.monotonic()
    deadline = start + args.duration
    await asyncio.gather(
        *(connection(url, args, stats, pool, deadline) for _ in range(args.connections))
    )
    elapsed = time.monotonic() - start
    lat = sorted(x * 1e6 for x in stats.latencies)
    n = len(lat)
    mean = sum(lat) / n if n else 0.0
    std = (sum((x - mean) ** 2 for x in lat) / n) ** 0.5 if n else 0.0
    out = {
        "requests": n,
        "duration_us": int(elapsed * 1e6),
        "bytes": stats.bytes,
        "errors": stats.errors,
        "latency_us": {
            "min": int(lat[0]) if n else 0,
            "mean": round(mean, 1),
            "stdev": round(std, 1),
            "max": int(lat[-1]) if n else 0,
            "p50": int(percentile(lat, 50)),
            "p90": int(percentile(lat, 90)),
            "p99": int(percentile(lat, 99)),
            "p99.9": int(percentile(lat, 99.9)),
        },
        "broken": stats.broken,
    }
    print("WRKJSON " + json.dumps(out), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--connections", "-c", type=int, default=16)
    ap.add_argument("--duration", "-d", type=float, default=5.0)
    ap.add_argument("--header", "-H", action="append", default=[])
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
