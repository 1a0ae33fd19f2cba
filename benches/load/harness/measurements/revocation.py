"""Revocation propagation between two instances on one database.

Warm instance B with a 200, log out through instance A, poll B until it answers 401; the time
from A's 204 to B's 401 is what LISTEN/NOTIFY invalidation buys (without it B would serve the
revoked token until its cache entry expires).
"""

import http.client
import re
import time

from ..client import API_PATH, login, request
from ..generators import median
from ..peers.gateway import Gateway
from ..procs import log, tail
from ..report import fmt

KEY = "revocation"
ORDER = 80
TITLE = "revocation propagation"
PEERS = False
ESSENTIAL = False



def wanted(args):
    # Two instances on one database: PostgreSQL only (a SQLite file serves one instance).
    return args.store == "postgres"

def revocation_cache_counts(gw):
    """portcullis_revocation_cache_total{result} from an instance's /metrics, or None."""
    try:
        st, body = request(gw.admin_port, "GET", "/metrics")
    except OSError:
        return None
    counts = {"hit": 0, "miss": 0}
    for line in body.decode(errors="replace").splitlines():
        m = re.match(r'portcullis_revocation_cache_total\{result="(hit|miss)"\}\s+([0-9.e+]+)', line)
        if m:
            counts[m.group(1)] = int(float(m.group(2)))
    return counts if st == 200 else None


def run(ctx):
    gw_b = Gateway(ctx.procs, ctx.tmp, "gateway-b", ctx.binary, ctx.proxy_cpu, ctx.db_url, ctx.keys_dir, ctx.up_port)
    if not gw_b.wait_ready(60):
        raise RuntimeError(f"gateway B did not start: {tail(gw_b.proc.bench_log, 3)}")
    try:
        return measure(ctx.args, ctx.gw, gw_b, ctx.email)
    finally:
        ctx.procs.stop(gw_b.proc)


def measure(args, gw_a, gw_b, email):
    """Warm B with a 200, log out via A, poll B until 401; latency from A's 204 to B's 401."""
    lat_done, lat_sent, timeouts, bad = [], [], 0, 0
    cache_before = revocation_cache_counts(gw_b)
    ca = http.client.HTTPConnection("127.0.0.1", gw_a.port, timeout=10)
    cb = http.client.HTTPConnection("127.0.0.1", gw_b.port, timeout=10)
    polls = []
    for _ in range(args.revocations):
        pair = login(gw_a.port, email)
        auth = {"Authorization": f"Bearer {pair['access_token']}"}
        st, _ = request(gw_b.port, "GET", API_PATH, headers=auth, conn=cb)
        if st != 200:
            bad += 1
            continue
        t_sent = time.perf_counter()
        st, _ = request(gw_a.port, "POST", "/auth/logout", {"refresh_token": pair["refresh_token"]}, conn=ca)
        t_done = time.perf_counter()
        if st != 204:
            bad += 1
            continue
        n = 0
        while True:
            st, _ = request(gw_b.port, "GET", API_PATH, headers=auth, conn=cb)
            n += 1
            now = time.perf_counter()
            if st == 401:
                lat_done.append((now - t_done) * 1000)
                lat_sent.append((now - t_sent) * 1000)
                polls.append(n)
                break
            if now - t_done > args.revocation_timeout:
                timeouts += 1
                break
    ca.close()
    cb.close()

    def pct(xs, p):
        if not xs:
            return None
        s = sorted(xs)
        return round(s[min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))], 3)

    out = {
        "revocations": len(lat_done),
        "timeouts": timeouts,
        "setup_failures": bad,
        "timeout_s": args.revocation_timeout,
        "p50_ms": pct(lat_done, 50),
        "p90_ms": pct(lat_done, 90),
        "p99_ms": pct(lat_done, 99),
        "max_ms": pct(lat_done, 100),
        "from_logout_sent_p50_ms": pct(lat_sent, 50),
        "from_logout_sent_p99_ms": pct(lat_sent, 99),
        "polls_median": median(polls),
    }
    cache_after = revocation_cache_counts(gw_b)
    if cache_before is not None and cache_after is not None:
        # B's revocation cache during the measurement: one miss per warm-up request is expected;
        # the polls after the logout should need no database query.
        out["instance_b_cache"] = {k: cache_after[k] - cache_before[k] for k in cache_after}
    log(f"revocation propagation: p50 {out['p50_ms']} ms, p99 {out['p99_ms']} ms over {len(lat_done)} (timeouts {timeouts})")
    return out


def headline(res):
    return {"revocation_p99_ms": (res.get(KEY) or {}).get("p99_ms")}


def verdicts(h):
    return [("revocation propagation p99 ≤ 100 ms", h.get("revocation_p99_ms"), lambda v: v <= 100, "{:.1f} ms")]


def md_bullets(res):
    rv = res.get(KEY) or {}
    if not rv:
        return []
    return [
        f"- Revocation propagation (logout via instance A → 401 on instance B, same database, "
        f"{rv['revocations']} revocations): p50 {fmt(rv['p50_ms'], '{:.1f}')} ms, p90 {fmt(rv['p90_ms'], '{:.1f}')} ms, "
        f"p99 {fmt(rv['p99_ms'], '{:.1f}')} ms, max {fmt(rv['max_ms'], '{:.1f}')} ms; timeouts ({rv['timeout_s']} s) {rv['timeouts']}; "
        f"median polls of B until the 401: {fmt(rv['polls_median'], '{:g}')}"
        + (
            f"; B's revocation cache meanwhile: {rv['instance_b_cache']['hit']} hits, {rv['instance_b_cache']['miss']} misses"
            if rv.get("instance_b_cache")
            else ""
        )
        + "."
    ]
