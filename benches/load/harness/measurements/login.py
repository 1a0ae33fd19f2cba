"""POST /auth/login throughput against the raw argon2id rate on the same core.

A login is one argon2id verification plus a few queries: the raw rate (benches/argon2_rate.rs)
is its ceiling, so the ratio shows what the gateway adds. The two alternate round by round and
the ratio is the median of the per-round ratios, so drift of the machine cancels out.
"""

import json
import os
import subprocess

from ..client import login_body
from ..generators import median, summarize
from ..procs import cpu_seconds, log

KEY = "login"
ORDER = 40
TITLE = "login throughput"
PEERS = False
ESSENTIAL = False


def raw_argon2(args, cpu, notes):
    if not args.argon2_bin or not os.path.exists(args.argon2_bin):
        notes.append("raw argon2 rate not measured (argon2_rate bench binary not built)")
        return None
    argv = [args.argon2_bin, "--bench", "--seconds", str(args.argon2_seconds)]
    if cpu is not None:
        argv = ["taskset", "-c", cpu] + argv
    r = subprocess.run(argv, capture_output=True, text=True, timeout=args.argon2_seconds * 3 + 60)
    for line in r.stdout.splitlines():
        if line.startswith("{"):
            return json.loads(line)
    notes.append(f"argon2_rate printed no result: {r.stdout[-300:]} {r.stderr[-300:]}")
    return None


def run(ctx):
    args, gw = ctx.args, ctx.gw
    url = f"http://127.0.0.1:{gw.port}/auth/login"
    rounds = []
    for rnd in range(args.rounds):
        raw = raw_argon2(args, ctx.proxy_cpu, ctx.notes)
        c0 = cpu_seconds(gw.pid)
        res = summarize(
            ctx.loader.run(url, args.login_connections, args.duration, mode="login", env={"BENCH_BODY": login_body(ctx.email)})
        )
        res["gateway_cpu_s"] = round(cpu_seconds(gw.pid) - c0, 3)
        ok = res["requests"] - res["non_2xx"]
        res["ok_per_sec"] = round(ok / res["seconds"], 2) if res["seconds"] else 0.0
        res["raw_argon2"] = raw
        if raw:
            res["ratio"] = round(res["ok_per_sec"] / raw["verifies_per_sec"], 3)
        rounds.append(res)
        log(
            f"login round {rnd + 1}: {res['ok_per_sec']:.1f}/s, p99 {res['p99_ms']:.1f} ms "
            f"(raw argon2 verify {raw and raw['verifies_per_sec']}/s)"
        )
    raws = [r["raw_argon2"] for r in rounds if r["raw_argon2"]]
    login = {
        "connections": args.login_connections,
        "ok_per_sec": median([r["ok_per_sec"] for r in rounds]),
        "p50_ms": median([r["p50_ms"] for r in rounds]),
        "p99_ms": median([r["p99_ms"] for r in rounds]),
        "non_2xx": sum(r["non_2xx"] for r in rounds),
        "errors": sum(r["errors"] for r in rounds),
        "gateway_cpu_ms_per_login": round(
            1000 * sum(r["gateway_cpu_s"] for r in rounds) / max(1, sum(r["requests"] for r in rounds)), 2
        ),
    }
    out = {"login": login, "rounds": rounds}
    if raws:
        out["raw_argon2"] = {
            "m_kib": raws[0]["m_kib"],
            "t": raws[0]["t"],
            "p": raws[0]["p"],
            "verifies_per_sec": median([r["verifies_per_sec"] for r in raws]),
            "hashes_per_sec": median([r["hashes_per_sec"] for r in raws]),
        }
        out["ratio"] = median([r["ratio"] for r in rounds if "ratio" in r])
    return out


def headline(res):
    return {"login_vs_raw_argon2": (res.get(KEY) or {}).get("ratio")}


def verdicts(h):
    return [("login ≥ 0.9× raw argon2 rate", h.get("login_vs_raw_argon2"), lambda v: v >= 0.9, "{:.2f}×")]


def md_bullets(res):
    lg = res.get(KEY) or {}
    if not lg:
        return []
    l = lg["login"]
    raw = lg.get("raw_argon2")
    rawtxt = (
        f"raw argon2id (m={raw['m_kib']} KiB, t={raw['t']}, p={raw['p']}, one thread on the gateway's core, "
        f"alternating with the login rounds): {raw['verifies_per_sec']:.1f} verifies/s, {raw['hashes_per_sec']:.1f} hashes/s"
        if raw
        else "raw argon2 rate not measured"
    )
    return [
        f"- Login (`POST /auth/login`, {l['connections']} connections): {l['ok_per_sec']:.1f}/s, "
        f"p50 {l['p50_ms']:.1f} ms, p99 {l['p99_ms']:.1f} ms, non-2xx {l['non_2xx']}, "
        f"gateway CPU {l['gateway_cpu_ms_per_login']:.1f} ms per login; {rawtxt}."
    ]
