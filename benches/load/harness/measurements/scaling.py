"""--threads N: the gateway with `server.threads = N` against nginx with N workers, nothing pinned.

The pinned one-core tables compare per-core efficiency; this shows what a small box gets when
the gateway may use every core (the load generator and the upstream share them, as they would
share a real host's cores with other work). Its own gateway instance, upstream and nginx.
"""

from .. import upstream
from ..client import API_PATH, wait_http
from ..generators import Loader
from ..peers import gateway, nginx, target
from ..procs import free_port, log, tail
from ..report import fmt
from . import targets

KEY = "scaling"
ORDER = 90
TITLE = "scaling"
PEERS = False
ESSENTIAL = False


def options(ap):
    ap.add_argument("--threads", type=int, default=0, help="also measure the gateway with N threads and nginx with N workers, unpinned (scaling table)")


def wanted(args):
    return args.threads > 1


def run(ctx):
    args, n = ctx.args, ctx.args.threads
    up = upstream.start(ctx, None, name=f"nginx-upstream-x{n}", workers=n)
    if up is None:
        raise RuntimeError("scaling upstream did not start")
    up_port, _ = up
    gw = gateway.Gateway(ctx.procs, ctx.tmp, f"gateway-x{n}", ctx.binary, None, ctx.db_url, ctx.keys_dir, up_port, threads=n)
    started = [gw.proc]
    try:
        if not gw.wait_ready(60):
            raise RuntimeError(f"gateway with {n} threads did not start: {tail(gw.proc.bench_log, 3)}")
        tl = gateway.targets(gw, ctx.auth_header, browser=False)
        for t in tl:
            t["label"] = t["label"].replace("portcullis,", f"portcullis ({n} threads),")
        if nginx.binary() and not args.no_peers:
            port = free_port()
            p = nginx.start(ctx, port, None, workers=n, name=f"nginx-proxy-x{n}", upstream_port=up_port)
            started.append(p)
            if wait_http(port, API_PATH, 10, p):
                tl.append(target("nginx", f"nginx proxy_pass ({n} workers)", port, ctx.auth_header, p.pid))
            else:
                ctx.notes.append(f"scaling: nginx with {n} workers did not start: {tail(p.bench_log, 3)}")
        loader = Loader(args, ctx.tmp, None)
        log(f"scaling: {n} gateway threads, {n} nginx workers, {n} wrk threads, nothing pinned")
        rows = targets.measure(ctx, tl, args.connections, args.duration, args.rounds, loader=loader, what="scaling", threads=n)
        return {"threads": n, "wrk_threads": n, "connections": args.connections, "pinned": False, "targets": rows}
    finally:
        for p in started:
            ctx.procs.stop(p)


def md_tables(res):
    sc = res.get(KEY)
    if not sc:
        return []
    one = {t["name"]: t for t in res.get("targets") or []}
    n = sc["threads"]
    lines = [
        f"Scaling: gateway `threads = {n}`, nginx {n} workers, wrk {n} threads, nothing pinned (all share the "
        f"{res['machine']['nproc']} cores), {sc['connections']} connections:",
        "",
        "| target | req/s (median, min–max) | p99 ms | vs. the pinned 1-worker req/s |",
        "|---|---:|---:|---:|",
    ]
    for t in sc["targets"]:
        base = one.get(t["name"], {}).get("rps")
        lines.append(
            f"| {t['label']} | {t['rps']:,.0f} ({t['rps_min']:,.0f}–{t['rps_max']:,.0f}) | {fmt(t['p99_ms'], '{:.3f}')} | "
            f"{fmt(t['rps'] / base if base else None, '{:.2f}×')} |"
        )
    lines.append("")
    return lines
