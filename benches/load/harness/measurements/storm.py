"""Protected-route latency while logins run (a login storm) against idle, alternating.

argon2id is deliberately expensive; this shows whether it starves the proxy path that shares
the process (it runs on its own low-priority pool).
"""

import time

from ..client import API_PATH, login_body
from ..generators import Loader, median, summarize
from ..procs import log
from ..report import fmt

KEY = "login_storm"
ORDER = 50
TITLE = "login storm"
PEERS = False
ESSENTIAL = False


def run(ctx):
    args, gw, loader = ctx.args, ctx.gw, ctx.loader
    url = f"http://127.0.0.1:{gw.port}{API_PATH}"
    login_url = f"http://127.0.0.1:{gw.port}/auth/login"
    hdr = ctx.auth_header
    idle, storm, logins = [], [], []
    for rnd in range(args.rounds):
        r = summarize(loader.run(url, args.connections, args.duration, hdr, threads=args.wrk_threads))
        idle.append(r)
        lp = loader.start(
            login_url,
            args.login_connections,
            args.duration + 2,
            mode="login",
            env={"BENCH_BODY": login_body(ctx.email)},
        )
        time.sleep(1.0)
        s = summarize(loader.run(url, args.connections, args.duration, hdr, threads=args.wrk_threads))
        storm.append(s)
        lr = summarize(Loader.finish(lp, args.duration + 2))
        logins.append(lr)
        log(
            f"storm round {rnd + 1}: idle p99 {r['p99_ms']:.3f} ms ({r['rps']:.0f}/s), "
            f"storm p99 {s['p99_ms']:.3f} ms ({s['rps']:.0f}/s, {lr['rps']:.1f} logins/s)"
        )

    def agg(rs):
        return {
            "rps": median([x["rps"] for x in rs]),
            "p50_ms": median([x["p50_ms"] for x in rs]),
            "p90_ms": median([x["p90_ms"] for x in rs]),
            "p99_ms": median([x["p99_ms"] for x in rs]),
            "p99.9_ms": median([x["p99.9_ms"] for x in rs]),
            "errors": sum(x["errors"] for x in rs),
            "non_2xx": sum(x["non_2xx"] for x in rs),
            "runs": rs,
        }

    out = {"idle": agg(idle), "storm": agg(storm), "logins_per_sec": median([x["rps"] for x in logins])}
    if out["idle"]["p99_ms"]:
        out["p99_ratio"] = round(out["storm"]["p99_ms"] / out["idle"]["p99_ms"], 3)
    return out


def headline(res):
    return {"storm_p99_vs_idle_p99": (res.get(KEY) or {}).get("p99_ratio")}


def verdicts(h):
    return [("protected p99 in a login storm ≤ 1.5× idle p99", h.get("storm_p99_vs_idle_p99"), lambda v: v <= 1.5, "{:.2f}×")]


def md_bullets(res):
    st = res.get(KEY) or {}
    if not st:
        return []
    return [
        f"- Protected route during a login storm ({st['logins_per_sec']:.1f} logins/s): p99 "
        f"{fmt(st['storm']['p99_ms'], '{:.3f}')} ms vs. {fmt(st['idle']['p99_ms'], '{:.3f}')} ms idle; "
        f"{st['storm']['rps']:,.0f} vs. {st['idle']['rps']:,.0f} req/s."
    ]
