"""Options, the run's setup (lock, watchdog, database, upstream, gateway, token, peers) and the
loop over the measurements. What is measured lives in measurements/, who is measured in peers/.
"""

import argparse
import datetime
import fcntl
import json
import os
import shutil
import signal
import tempfile
import threading
import time
import types

from . import machine, measurements, peers, report, upstream
from .client import PASSWORD, request, login
from .generators import Loader, Oha
from .peers import gateway
from .procs import ROOT, Procs, log, tail

LOCK_PATH = os.path.join(tempfile.gettempdir(), "portcullis-load-bench.lock")


def parse_args(doc):
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="short run, no thresholds, output to a temp dir")
    ap.add_argument("--binary", help="portcullis binary (default target/release/portcullis)")
    ap.add_argument("--argon2-bin", help="argon2_rate bench executable")
    ap.add_argument("--duration", type=int, help="seconds per measured run (full 8, smoke 2)")
    ap.add_argument("--rounds", type=int, help="alternating rounds (full 5, smoke 1)")
    ap.add_argument("--connections", type=int, default=64, help="connections per proxy target")
    ap.add_argument("--store", choices=["postgres", "sqlite"], default="postgres",
                    help="the gateway's store: PostgreSQL (DATABASE_URL's server) or a SQLite file in the run's temp dir")
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument("--login-connections", type=int, default=4)
    ap.add_argument("--refresh-connections", type=int, default=16)
    ap.add_argument("--revocations", type=int, help="revocations to time (full 120, smoke 10)")
    ap.add_argument("--revocation-timeout", type=float, default=5.0)
    ap.add_argument("--argon2-seconds", type=float, help="seconds per raw argon2 round, half hashing, half verifying (full 6, smoke 1)")
    ap.add_argument("--loadgen", choices=["auto", "python"], default="auto")
    ap.add_argument("--upstream", choices=["auto", "python"], default="auto")
    ap.add_argument("--no-peers", action="store_true", help="skip the proxy peers (nginx proxy_pass, HAProxy, ...)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs; smoke results)")
    ap.add_argument("--out", help="output directory (full: benches/results; smoke: a temp dir)")
    ap.add_argument("--quiet-wait", default="", help="what run.sh's quiet-machine wait found (recorded)")
    ap.add_argument("--build-command", default="", help="how run.sh built the binary (recorded)")
    ap.add_argument("--hard-timeout", type=float, help="kill everything after this many seconds")
    ap.add_argument("--render", metavar="DIR", help="only re-render DIR/results.json")
    ap.add_argument("--update-readme", nargs=2, metavar=("README", "DIR"))
    ap.add_argument("--only", metavar="KEYS", help="run only these measurements, comma-separated module names or results.json keys (e.g. realistic,targets)")
    for m in measurements.modules():
        if hasattr(m, "options"):
            m.options(ap)
    a = ap.parse_args()
    smoke = a.smoke
    a.duration = a.duration or (2 if smoke else 8)
    a.rounds = a.rounds or (1 if smoke else 5)
    a.revocations = a.revocations or (10 if smoke else 120)
    a.argon2_seconds = a.argon2_seconds or (1.0 if smoke else 6.0)
    if smoke:
        a.refresh_connections = min(a.refresh_connections, 4)
    a.hard_timeout = a.hard_timeout or (180.0 if smoke else 2400.0)
    if a.only:
        a.only = {x.strip() for x in a.only.split(",") if x.strip()}
        known = {n for m in measurements.modules() for n in (m.KEY, module_name(m))}
        if a.only - known:
            ap.error(f"--only: unknown measurement(s) {', '.join(sorted(a.only - known))}; known: {', '.join(sorted(known))}")
    return a


def module_name(m):
    return m.__name__.rsplit(".", 1)[1]


def wanted(m, args):
    """Whether this run does measurement `m`: its own wanted(args), narrowed by --only."""
    if args.only and not {m.KEY, module_name(m)} & args.only:
        return False
    return getattr(m, "wanted", lambda a: True)(args)


def main(doc):
    args = parse_args(doc)
    if args.render:
        with open(os.path.join(args.render, "results.json")) as f:
            res = json.load(f)
        res["headline"] = report.headline(res)
        res["verdicts"] = report.verdicts(res["headline"], res["mode"] == "smoke", set(res))
        report.write_outputs(res, args.render)
        return 0
    if args.update_readme:
        report.update_readme(*args.update_readme)
        return 0

    mode = "smoke" if args.smoke else "full"
    binary = os.path.abspath(args.binary or os.path.join(ROOT, "target", "release", "portcullis"))
    if not os.path.exists(binary):
        log(f"gateway binary {binary} not found")
        return 1
    tmp = tempfile.mkdtemp(prefix="portcullis-bench-")
    out_dir = args.out or (os.path.join(tmp, "results") if args.smoke else os.path.join(ROOT, "benches", "results"))
    procs = Procs(tmp)
    notes = []

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    # One benchmark at a time on a machine: a full run waits for the lock; a smoke run (CI, must
    # stay short) only notes that another run is going on.
    lock = open(LOCK_PATH, "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        if args.smoke:
            notes.append("another load-harness run held the lock: numbers disturbed")
        else:
            log(f"another load-harness run holds {LOCK_PATH}: waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)

    def watchdog():
        log(f"hard timeout ({args.hard_timeout:.0f} s) reached: stopping")
        os.kill(os.getpid(), signal.SIGTERM)

    timer = threading.Timer(args.hard_timeout, watchdog)
    timer.daemon = True
    timer.start()

    # DROP DATABASE forces a checkpoint (tens of seconds on a busy machine): a full run uses its
    # own database and drops it at the end; smoke runs share one that is never dropped (every run
    # registers its own user).
    db_name = "portcullis_bench_smoke" if args.smoke else f"portcullis_bench_load_{os.getpid()}"
    db_url, admin_url = machine.db_urls(db_name)
    if args.store == "sqlite":
        db_url = f"sqlite://{os.path.join(tmp, 'bench.db')}"
    ctx = types.SimpleNamespace(
        args=args, mode=mode, binary=binary, tmp=tmp, out_dir=out_dir, procs=procs, notes=notes, db_url=db_url
    )
    rc = 1
    try:
        rc = run(ctx)
        return rc
    finally:
        timer.cancel()
        t0 = time.monotonic()
        procs.stop_all()
        if not args.smoke and args.store == "postgres":
            machine.drop_database(admin_url, db_name)
        log(f"cleanup took {time.monotonic() - t0:.1f} s")
        lock.close()
        if args.keep or (args.smoke and rc != 0):
            log(f"outputs and logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            if args.smoke:
                log("temp dir removed (--keep keeps it)")


def run(ctx):
    """Sets up ctx (the run context every peer and measurement reads), then measures."""
    args, notes, procs = ctx.args, ctx.notes, ctx.procs
    started = datetime.datetime.now(datetime.timezone.utc)
    ncpu = len(os.sched_getaffinity(0))
    if ncpu >= 2 and shutil.which("taskset"):
        cpus = sorted(os.sched_getaffinity(0))
        ctx.proxy_cpu, ctx.load_cpu = str(cpus[0]), str(cpus[1])
        pinning = {"proxy_cpu": ctx.proxy_cpu, "load_cpu": ctx.load_cpu}
    else:
        ctx.proxy_cpu = ctx.load_cpu = None
        pinning = None
        notes.append("no CPU pinning: fewer than 2 CPUs or taskset missing")
    ctx.loader = Loader(args, ctx.tmp, ctx.load_cpu)
    if ctx.loader.kind != "wrk":
        notes.append("wrk not used (not installed, or --loadgen python): the Python fallback load generator ran, and it, not the targets, is the bottleneck")

    up = upstream.start(ctx, ctx.load_cpu)
    if up is None:
        return 1
    ctx.up_port, upstream_kind = up
    log(f"upstream: {upstream_kind} on 127.0.0.1:{ctx.up_port}")

    # gateway A
    ctx.keys_dir = os.path.join(ctx.tmp, "keys")
    os.makedirs(ctx.keys_dir, exist_ok=True)
    gw = ctx.gw = gateway.Gateway(procs, ctx.tmp, "gateway-a", ctx.binary, ctx.proxy_cpu, ctx.db_url, ctx.keys_dir, ctx.up_port)
    if not gw.wait_ready(90):
        log(f"gateway did not become ready:\n{tail(gw.proc.bench_log, 40)}")
        return 1
    log(f"gateway A pid {gw.pid} on 127.0.0.1:{gw.port} (admin {gw.admin_port})")

    ctx.email = f"bench-{int(time.time())}-{os.getpid()}@example.com"
    st, body = request(gw.port, "POST", "/auth/register", {"email": ctx.email, "password": PASSWORD})
    if st != 201:
        log(f"register answered {st}: {body[:300]!r}")
        return 1
    ctx.token = login(gw.port, ctx.email)["access_token"]
    ctx.auth_header = [f"Authorization: Bearer {ctx.token}"]
    ctx.checks = {}
    st, jwks = request(gw.port, "GET", "/auth/jwks.json")
    ctx.jwks = jwks.decode()
    ctx.pubkey = os.path.join(ctx.tmp, "es256-public.pem")
    with open(ctx.pubkey, "w") as f:
        f.write(gateway.es256_public_pem(json.loads(jwks)))
    ctx.issuer, ctx.audience = gateway.ISSUER, gateway.AUDIENCE

    ctx.wrong_role_token = gateway.wrong_role_token(gw, ctx.binary, ctx.email)
    if ctx.wrong_role_token is None:
        notes.append("no token with a wrong role (user set-role failed): the wrong-role checks were skipped")
    notes.append(f"store: {args.store}")

    # The gateway answers like the JWT peers must (peers/__init__.py verifies those the same way).
    ok, ctx.checks["protected"] = peers.verify(ctx, gw.port, jwt=True)
    st = request(gw.port, "GET", "/public/bench")[0]
    ctx.checks["public"] = {"no token": st}
    if not ok or st != 200:
        log(f"gateway sanity checks failed: {ctx.checks}")
        return 1

    direct = peers.target("direct", "direct to upstream (limit)", ctx.up_port, ctx.auth_header, None)
    ctx.targets = [direct] + gateway.targets(gw, ctx.auth_header)
    ctx.peers = []
    peer_modules = peers.modules()
    mods = [m for m in measurements.modules() if wanted(m, args)]
    if args.only:
        notes.append(f"only these measurements (--only): {', '.join(m.TITLE for m in mods)}")
    if args.no_peers:
        notes.append("peers skipped (--no-peers)")
    elif not any(m.PEERS for m in mods):
        notes.append("peers not started: no measurement of this run compares them")
    else:
        peers.start_all(ctx)

    res = {
        "schema": 1,
        "mode": ctx.mode,
        "started_at": started.isoformat(timespec="seconds"),
        "git": machine.git_info(),
        "machine": machine.machine_info(),
        "binary": os.path.relpath(ctx.binary, ROOT) if ctx.binary.startswith(ROOT) else ctx.binary,
        "pinning": pinning,
        "tools": machine.tool_versions(ctx.loader, upstream_kind, peer_modules, Oha(None).path),
        "quiet_wait": args.quiet_wait,
        "build_command": args.build_command,
        "settings": {
            "duration_s": args.duration,
            "rounds": args.rounds,
            "connections": args.connections,
            "wrk_threads": args.wrk_threads,
            "login_connections": args.login_connections,
            "refresh_connections": args.refresh_connections,
            "revocations": args.revocations,
            "gateway": {"threads": 1, "algorithm": "ES256", "argon2": "m=19456 t=2 p=1 (defaults)", "rate_limits": 0, "RUST_LOG": "warn", "access_log": "on (log.access_log default; RUST_LOG does not filter it)"},
        },
        "checks": ctx.checks,
        "notes": notes,
    }
    ctx.res = res

    last_with_peers = max((i for i, m in enumerate(mods) if m.PEERS), default=-1)
    for i, m in enumerate(mods):
        if m.ESSENTIAL:
            res[m.KEY] = m.run(ctx)
        else:
            try:
                res[m.KEY] = m.run(ctx)
            except Exception as e:  # noqa: BLE001 - reported, not hidden
                log(f"{m.TITLE} failed: {e!r}")
                notes.append(f"{m.TITLE} not measured: {e!r}"[:500])
                res[m.KEY] = None
        if i == last_with_peers:
            for p in ctx.peers:
                procs.stop(p)

    res["finished_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    res["headline"] = report.headline(res)
    res["verdicts"] = report.verdicts(res["headline"], args.smoke, set(res))
    report.write_outputs(res, ctx.out_dir)
    print()
    print(report.render_md(res))
    log(f"results written to {ctx.out_dir}")
    return 0
