"""POST /auth/refresh throughput, every connection rotating its own token chain.

Refresh is the database-heavy endpoint (row lock and writes per rotation); wrk.lua sends each
answer's refresh_token next, so a broken chain (reuse detection) shows up as `broken`.
"""

import os

from ..client import login
from ..generators import summarize
from ..procs import cpu_seconds, log
from ..report import fmt

KEY = "refresh"
ORDER = 60
TITLE = "refresh throughput"
PEERS = False
ESSENTIAL = False


def run(ctx):
    args, gw = ctx.args, ctx.gw
    chains = args.refresh_connections * 2
    tokens = [login(gw.port, ctx.email)["refresh_token"] for _ in range(chains)]
    path = os.path.join(ctx.tmp, "refresh-tokens.txt")
    with open(path, "w") as f:
        f.write("\n".join(tokens) + "\n")
    url = f"http://127.0.0.1:{gw.port}/auth/refresh"
    c0 = cpu_seconds(gw.pid)
    res = summarize(ctx.loader.run(url, args.refresh_connections, args.duration, mode="refresh", env={"BENCH_TOKENS": path}))
    res["gateway_cpu_s"] = round(cpu_seconds(gw.pid) - c0, 3)
    res["connections"] = args.refresh_connections
    res["chains"] = chains
    ok = res["requests"] - res["non_2xx"]
    res["ok_per_sec"] = round(ok / res["seconds"], 1) if res["seconds"] else 0.0
    log(f"refresh: {res['ok_per_sec']:.0f}/s, p99 {res['p99_ms']:.2f} ms, broken chains {res['broken']}")
    return res


def md_bullets(res):
    rf = res.get(KEY) or {}
    if not rf:
        return []
    return [
        f"- Refresh (`POST /auth/refresh`, {rf['connections']} connections each rotating its own token chain): "
        f"{rf['ok_per_sec']:,.0f}/s, p50 {rf['p50_ms']:.2f} ms, p99 {rf['p99_ms']:.2f} ms, broken chains {rf['broken']}, "
        f"gateway CPU {fmt(rf['gateway_cpu_s'] / max(1, rf['requests']) * 1e4, '{:.2f}')} s per 10k."
    ]
