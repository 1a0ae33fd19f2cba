"""What the minimal bench config leaves open: the access log's cost, a realistic route table,
upstream keep-alive reuse (issue #9).

The access log is not a tracing event filtered by RUST_LOG: the gateway writes its lines
straight to the log writer whenever `[log] access_log` is true (the default). So gateway A
(RUST_LOG=warn, minimal config) logs every request, as every earlier run did; off needs
`access_log = false`. Three gateways of their own, pinned like gateway A, on the same database
and keys (the run's token verifies on each), take turns in closed-loop rounds
(targets.measure: same wrk, connections, duration and rounds):

  minimal_off  gateway A's config plus `[log] access_log = false`, RUST_LOG=warn
  minimal      gateway A's config as it is, RUST_LOG=warn (access log on)
  realistic    13 routes, roles user and admin, three upstream pools, rate limits at the
               shipped defaults, the shipped [log] (text, level info, access log on, sample
               1.0), no RUST_LOG; the token (role `user`) hits /api/v1/orders/, a `user` route
               that is neither the first nor the shortest prefix (/api/ and /api/v1/ match too)

Logs go where the gateway writes them (stderr), which the harness sends to a file
(`<tmp>/<name>.log`), as systemd or a shell redirect would; log bytes per request show which
gateway logged.

Upstream keep-alive reuse: their upstream is an nginx of its own (pinned like the main one)
with stub_status, whose `accepts` counter is the number of TCP connections the gateway opened
to it. Per measured round: reuse = 1 − new upstream connections ÷ requests. The gateway
exports no upstream-connection counter, and counting established sockets would miss a
connection opened and closed within the round. Without stub_status (or nginx) the main upstream
is used and reuse is not measured.
"""

import os
import subprocess

from ..client import API_PATH, request, wait_http
from ..peers import gateway
from ..procs import free_port, log, tail
from ..report import fmt
from ..upstream import start_nginx_upstream
from . import targets

KEY = "realistic"
ORDER = 85
TITLE = "access log and realistic config"
PEERS = False
ESSENTIAL = False

STATUS_PATH = "/__upstream_status"
REALISTIC_PATH = "/api/v1/orders/bench"


def realistic_body(upstream_port):
    """An operator's config: the shipped [rate_limit] defaults, three upstream pools on the one
    upstream (so that every route reaches it), 13 routes, the shipped [log] defaults."""
    up = f'addrs = ["127.0.0.1:{upstream_port}"]'
    return f"""[rate_limit]
login_per_minute_per_ip = 20
login_per_minute_per_account = 10
register_per_minute_per_ip = 10

[[upstream]]
name = "api"
{up}

[[upstream]]
name = "admin"
{up}

[[upstream]]
name = "static"
{up}

[[route]]
prefix = "/api/"
upstream = "api"

[[route]]
prefix = "/api/admin/"
upstream = "admin"
roles = ["admin"]

[[route]]
prefix = "/api/v1/"
upstream = "api"
roles = ["user", "admin"]

[[route]]
prefix = "/api/v1/orders/"
upstream = "api"
roles = ["user"]

[[route]]
prefix = "/api/v1/orders/"
host = "ops.example.com"
upstream = "admin"
roles = ["admin"]

[[route]]
prefix = "/api/v1/users/"
upstream = "api"
roles = ["user"]
methods = ["GET", "HEAD"]

[[route]]
prefix = "/api/v1/reports/"
upstream = "admin"
roles = ["admin"]

[[route]]
prefix = "/internal/"
host = "internal.example.com"
upstream = "admin"
roles = ["admin"]

[[route]]
prefix = "/feed/"
upstream = "api"
auth = "optional"

[[route]]
prefix = "/public/"
upstream = "api"
auth = "none"

[[route]]
prefix = "/static/"
upstream = "static"
auth = "none"
methods = ["GET", "HEAD"]
strip_prefix = true

[[route]]
prefix = "/webhooks/"
upstream = "api"
auth = "none"
methods = ["POST"]

[[route]]
prefix = "/healthz/"
upstream = "api"
auth = "none"
methods = ["GET"]

[log]
format = "text"
level = "info"
access_log = true
access_log_sample = 1.0
"""


def has_stub_status():
    try:
        out = subprocess.run(["nginx", "-V"], capture_output=True, text=True, timeout=10)
    except OSError:
        return False
    return "http_stub_status_module" in out.stdout + out.stderr


def upstream_counters(port):
    """(accepted connections, requests) from nginx's stub_status. The read itself is one more
    accepted connection and request, which the caller subtracts."""
    st, body = request(port, "GET", STATUS_PATH)
    if st != 200:
        raise RuntimeError(f"stub_status answered {st}")
    accepts, _handled, requests = (int(x) for x in body.decode().splitlines()[2].split())
    return accepts, requests


class CountingLoader:
    """ctx.loader, plus the upstream's counters around every run: what targets.measure calls
    (it only calls run), so its rounds, order and summaries stay exactly those of targets.py."""

    def __init__(self, loader, status_port):
        self.loader, self.status_port = loader, status_port
        self.counts = {}  # url -> [{requests, upstream_new_connections, upstream_requests}]

    def run(self, url, connections, duration, headers=(), mode="get", env=None, threads=1):
        a0, r0 = upstream_counters(self.status_port)
        res = self.loader.run(url, connections, duration, headers, mode, env, threads)
        a1, r1 = upstream_counters(self.status_port)
        self.counts.setdefault(url, []).append(
            {"requests": res["requests"], "upstream_new_connections": a1 - a0 - 1, "upstream_requests": r1 - r0 - 1}
        )
        return res


def run(ctx):
    args, procs = ctx.args, ctx.procs
    started = []
    try:
        status_port = None
        up_port = ctx.up_port
        if args.upstream == "auto" and has_stub_status():
            port = free_port()
            p = start_nginx_upstream(procs, ctx.tmp, ctx.load_cpu, port, "nginx-upstream-realistic", status_path=STATUS_PATH)
            started.append(p)
            if wait_http(port, STATUS_PATH, 10, p):
                up_port, status_port = port, port
            else:
                ctx.notes.append(f"realistic: nginx upstream with stub_status did not start ({tail(p.bench_log, 3)}): reuse not measured")
        else:
            ctx.notes.append("realistic: no nginx with stub_status: upstream keep-alive reuse not measured")

        minimal = gateway.minimal_body(up_port)
        variants = [
            ("minimal_off", "minimal config, access log off", "warn", minimal + "\n[log]\naccess_log = false\n", API_PATH),
            ("minimal", "minimal config, access log on (as gateway A)", "warn", minimal, API_PATH),
            ("realistic", "realistic config: 13 routes, rate limits on, access log on, level info", None, realistic_body(up_port), REALISTIC_PATH),
        ]
        gws, tl = {}, []
        for name, label, rust_log, body, path in variants:
            gw = gateway.Gateway(
                procs, ctx.tmp, f"gateway-{name}", ctx.binary, ctx.proxy_cpu, ctx.db_url, ctx.keys_dir, up_port, rust_log=rust_log, body=body
            )
            started.append(gw.proc)
            if not gw.wait_ready(60):
                raise RuntimeError(f"gateway {name} did not start: {tail(gw.proc.bench_log, 3)}")
            st = request(gw.port, "GET", path, headers={"Authorization": f"Bearer {ctx.token}"})[0]
            if st != 200:
                raise RuntimeError(f"gateway {name}: GET {path} with the token answered {st}")
            gws[name] = gw
            tl.append({"name": name, "label": label, "url": f"http://127.0.0.1:{gw.port}{path}", "headers": ctx.auth_header, "pid": gw.pid})
        # the token's role is `user`: the realistic config's admin route must refuse it
        denied = request(gws["realistic"].port, "GET", "/api/admin/bench", headers={"Authorization": f"Bearer {ctx.token}"})[0]
        if denied != 403:
            raise RuntimeError(f"realistic config: /api/admin/ with a `user` token answered {denied}, not 403")

        # warm-up outside the counted rounds, then the rounds as targets.py measures them
        warm = max(1, min(2, round(args.duration / 4)))
        for t in tl:
            log(f"warm-up {t['name']} ({warm} s)")
            ctx.loader.run(t["url"], args.connections, warm, t["headers"], threads=args.wrk_threads)
        logs0 = {n: os.path.getsize(g.proc.bench_log) for n, g in gws.items()}
        loader = CountingLoader(ctx.loader, status_port) if status_port else ctx.loader
        rows = targets.measure(ctx, tl, args.connections, args.duration, args.rounds, loader=loader, warm_up=False, what="realistic")
        for row, t in zip(rows, tl):
            row["log_bytes_per_request"] = round((os.path.getsize(gws[t["name"]].proc.bench_log) - logs0[t["name"]]) / row["requests"], 1) if row["requests"] else None
            counts = loader.counts.get(t["url"]) if status_port else None
            if counts:
                new = sum(c["upstream_new_connections"] for c in counts)
                reqs = sum(c["requests"] for c in counts)
                row["upstream_new_connections"] = new
                row["upstream_requests"] = sum(c["upstream_requests"] for c in counts)
                row["upstream_reuse"] = round(1 - new / reqs, 6) if reqs else None
                row["upstream_rounds"] = counts
            log(f"realistic {t['name']}: reuse {fmt(row.get('upstream_reuse'), '{:.4f}')}, log {fmt(row['log_bytes_per_request'], '{:.0f}')} bytes/request")
        return {
            "path": REALISTIC_PATH,
            "routes": realistic_body(up_port).count("[[route]]"),
            "reuse_counter": "nginx stub_status accepts" if status_port else None,
            "targets": rows,
        }
    finally:
        for p in reversed(started):
            procs.stop(p)


def rows(res):
    return {t["name"]: t for t in (res.get(KEY) or {}).get("targets") or []}


def headline(res):
    t = rows(res)
    base = t.get("minimal", {}).get("rps")
    return {
        "access_log_on_vs_off": targets.ratio(base, t.get("minimal_off", {}).get("rps")),
        "realistic_vs_minimal": targets.ratio(t.get("realistic", {}).get("rps"), base),
        "realistic_vs_minimal_off": targets.ratio(t.get("realistic", {}).get("rps"), t.get("minimal_off", {}).get("rps")),
        "realistic_p99_ms": t.get("realistic", {}).get("p99_ms"),
        "upstream_reuse_protected": t.get("minimal", {}).get("upstream_reuse"),
    }


def verdicts(h):
    return [
        ("access log on ≥ 0.9× off (protected req/s)", h.get("access_log_on_vs_off"), lambda v: v >= 0.9, "{:.2f}×"),
        ("realistic config ≥ 0.9× minimal, both logging (protected req/s)", h.get("realistic_vs_minimal"), lambda v: v >= 0.9, "{:.2f}×"),
    ]


def md_tables(res):
    r = res.get(KEY)
    if not r:
        return []
    base = rows(res).get("minimal", {}).get("rps")
    lines = [
        f"Access log and a realistic config (protected route, token role `user`; realistic: {r['routes']} routes, "
        f"`{r['path']}`, rate limits at the shipped defaults); upstream reuse = 1 − new upstream connections ÷ requests "
        f"({r['reuse_counter'] or 'not measured'}):",
        "",
        "| gateway config | req/s (median, min–max) | vs. minimal (log on) | p50 ms | p99 ms | p99.9 ms | errors / non-2xx | CPU s per 10k req | log bytes per req | new upstream conns | upstream reuse |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in r["targets"]:
        lines.append(
            f"| {t['label']} | {t['rps']:,.0f} ({t['rps_min']:,.0f}–{t['rps_max']:,.0f}) | {fmt(targets.ratio(t['rps'], base), '{:.2f}×')} | "
            f"{fmt(t['p50_ms'], '{:.3f}')} | {fmt(t['p99_ms'], '{:.3f}')} | {fmt(t['p99.9_ms'], '{:.3f}')} | {t['errors']} / {t['non_2xx']} | "
            f"{fmt(t['cpu_s_per_10k'], '{:.3f}')} | {fmt(t.get('log_bytes_per_request'), '{:.0f}')} | "
            f"{fmt(t.get('upstream_new_connections'), '{:,}')} | {fmt(t.get('upstream_reuse'), '{:.4f}')} |"
        )
    lines.append("")
    return lines


def md_bullets(res):
    h = headline(res)
    if not res.get(KEY):
        return []
    return [
        f"- Access log on vs. off: {fmt(h['access_log_on_vs_off'], '{:.2f}×')} the req/s; realistic config vs. minimal (both with the access log): "
        f"{fmt(h['realistic_vs_minimal'], '{:.2f}×')} (p99 {fmt(h['realistic_p99_ms'], '{:.3f}')} ms), "
        f"vs. minimal without the access log {fmt(h['realistic_vs_minimal_off'], '{:.2f}×')}; upstream keep-alive reuse "
        f"on the protected route (minimal config): {fmt(h['upstream_reuse_protected'], '{:.4f}')}."
    ]
