"""Closed loop with one connection: the latency each proxy adds to a single request.

At saturation latency is mostly queueing; with one connection and nothing queued, a target's
p50 minus direct's p50 is what the proxy itself adds to one request.
"""

from ..report import fmt
from . import targets

KEY = "one_connection"
ORDER = 15
TITLE = "one-connection latency"
PEERS = True
ESSENTIAL = False


def options(ap):
    ap.add_argument("--one-connection-duration", type=int, help="seconds per one-connection run (full 4, smoke 1)")


def run(ctx):
    args = ctx.args
    duration = args.one_connection_duration or (1 if args.smoke else min(4, args.duration))
    rows = targets.measure(ctx, ctx.targets, 1, duration, args.rounds, warm_up=False, what="one connection")
    direct = next((r for r in rows if r["name"] == "direct"), None)
    out = []
    for r in rows:
        row = {k: r[k] for k in ("name", "label", "rps", "p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "errors", "non_2xx")}
        if direct and r["name"] != "direct":
            row["added_p50_ms"] = round(r["p50_ms"] - direct["p50_ms"], 4)
            row["added_p99_ms"] = round(r["p99_ms"] - direct["p99_ms"], 4)
        out.append(row)
    return {"connections": 1, "duration_s": duration, "rounds": args.rounds, "targets": out}


def added(res, name, key="added_p50_ms"):
    for r in (res.get(KEY) or {}).get("targets", []):
        if r["name"] == name:
            return r.get(key)
    return None


def headline(res):
    p, n = added(res, "protected"), added(res, "nginx")
    return {
        "one_connection_added_p50_protected_ms": p,
        "one_connection_added_p50_nginx_ms": n,
        "one_connection_added_p50_protected_vs_nginx": round(p / n, 3) if (p is not None and n) else None,
    }


def verdicts(h):
    return [
        (
            "one connection: protected added p50 ≤ 1.5× nginx's",
            h.get("one_connection_added_p50_protected_vs_nginx"),
            lambda v: v <= 1.5,
            "{:.2f}×",
        )
    ]


def md_tables(res):
    oc = res.get(KEY)
    if not oc:
        return []
    lines = [
        f"One connection (closed loop, {oc['rounds']} alternating rounds × {oc['duration_s']:g} s; added = target − direct):",
        "",
        "| target | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in oc["targets"]:
        lines.append(
            f"| {r['label']} | {r['rps']:,.0f} | {fmt(r['p50_ms'], '{:.3f}')} | {fmt(r['p99_ms'], '{:.3f}')} | "
            f"{fmt(r.get('added_p50_ms'), '{:.3f}')} | {fmt(r.get('added_p99_ms'), '{:.3f}')} |"
        )
    lines.append("")
    return lines
