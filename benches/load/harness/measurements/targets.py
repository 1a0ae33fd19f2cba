"""Closed-loop saturation of every target: req/s, latency percentiles, CPU and RSS per request.

The headline measurement: the targets (direct, the gateway's two routes, each peer) take turns
round by round, so that drift of the shared machine spreads over all of them; the median of
the rounds is reported. Also renders latency.svg.
"""

import math

from ..generators import median, summarize
from ..procs import cpu_seconds, disturbance, log, peak_rss_kib
from ..report import COLORS, esc, fmt, svg_head

KEY = "targets"
ORDER = 10
TITLE = "closed-loop targets"
PEERS = True
ESSENTIAL = True


def measure(ctx, targets, connections, duration, rounds, loader=None, warm_up=True, what=None, threads=None):
    """Alternating rounds over `targets`; one aggregated dict per target. `what` names the
    measurement in its notes (None: the closed-loop table)."""
    loader = loader or ctx.loader
    args = ctx.args
    threads = threads or args.wrk_threads
    runs = {t["name"]: [] for t in targets}
    if warm_up:
        warm = max(1, min(2, round(duration / 4)))
        for t in targets:
            log(f"warm-up {t['name']} ({warm} s)")
            r = loader.run(t["url"], connections, warm, t["headers"], threads=threads)
            if r["requests"] == 0:
                ctx.notes.append(f"{t['name']}: no response during warm-up")
    pids = [p.pid for p in ctx.procs.items]  # ours: not a disturbance
    for rnd in range(rounds):
        order = targets[rnd % len(targets) :] + targets[: rnd % len(targets)]
        for t in order:
            pid = t.get("pid")
            load, builds = disturbance(pids)
            c0 = cpu_seconds(pid) if pid else None
            res = summarize(loader.run(t["url"], connections, duration, t["headers"], threads=threads))
            if pid:
                res["proxy_cpu_s"] = round(cpu_seconds(pid) - c0, 3)
            res["round"] = rnd + 1
            res["loadavg_before"] = load
            res["builds_running"] = builds
            runs[t["name"]].append(res)
            log(
                f"round {rnd + 1}/{rounds} {t['name']:>9}: {res['rps']:>9.0f} req/s  "
                f"p50 {res['p50_ms']:.3f}  p99 {res['p99_ms']:.3f}  p99.9 {res['p99.9_ms']:.3f} ms  "
                f"errors {res['errors']} non-2xx {res['non_2xx']}"
            )
    disturbed = sum(1 for rs in runs.values() for r in rs if r["builds_running"])
    if disturbed:
        ctx.notes.append(
            (f"{what}: " if what else "") + f"{disturbed} measured runs had someone else's cargo/rustc or another portcullis/wrk "
            "running (runs[].builds_running in results.json)"
        )
    out = []
    for t in targets:
        rs = runs[t["name"]]
        pid = t.get("pid")
        reqs = sum(r["requests"] for r in rs)
        cpu = sum(r.get("proxy_cpu_s", 0) for r in rs) if pid else None
        out.append(
            {
                "name": t["name"],
                "label": t["label"],
                "rps": median([r["rps"] for r in rs]),
                "rps_min": min(r["rps"] for r in rs),
                "rps_max": max(r["rps"] for r in rs),
                "p50_ms": median([r["p50_ms"] for r in rs]),
                "p90_ms": median([r["p90_ms"] for r in rs]),
                "p99_ms": median([r["p99_ms"] for r in rs]),
                "p99.9_ms": median([r["p99.9_ms"] for r in rs]),
                "requests": reqs,
                "errors": sum(r["errors"] for r in rs),
                "non_2xx": sum(r["non_2xx"] for r in rs),
                "cpu_s_per_10k": round(cpu / reqs * 1e4, 4) if (pid and reqs) else None,
                "peak_rss_kib": peak_rss_kib(pid) if pid else None,
                "runs": rs,
            }
        )
    return out


def run(ctx):
    return measure(ctx, ctx.targets, ctx.args.connections, ctx.args.duration, ctx.args.rounds)


def ratio(a, b):
    return round(a / b, 3) if (a is not None and b) else None


def by_name(res):
    return {x["name"]: x for x in res.get(KEY) or []}


def headline(res):
    t = by_name(res)
    p = t.get("protected", {}).get("rps")
    h = {
        "protected_vs_public": ratio(p, t.get("public", {}).get("rps")),
        "protected_vs_nginx": ratio(p, t.get("nginx", {}).get("rps")),
        "protected_vs_haproxy": ratio(p, t.get("haproxy", {}).get("rps")),
        "protected_vs_envoy": ratio(p, t.get("envoy", {}).get("rps")),
        "protected_vs_direct": ratio(p, t.get("direct", {}).get("rps")),
        "protected_p99_ms": t.get("protected", {}).get("p99_ms"),
        "nginx_p99_ms": t.get("nginx", {}).get("p99_ms"),
        "cookie_vs_bearer": ratio(t.get("protected-cookie", {}).get("rps"), p),
        "forward_auth_rps": t.get("forward-auth", {}).get("rps"),
    }
    h["protected_p99_vs_nginx_p99"] = ratio(h["protected_p99_ms"], h["nginx_p99_ms"])
    return h


def verdicts(h):
    return [
        ("protected ≥ 0.9× public route (req/s)", h.get("protected_vs_public"), lambda v: v >= 0.9, "{:.2f}×"),
        ("protected ≥ 0.6× nginx proxy_pass (req/s)", h.get("protected_vs_nginx"), lambda v: v >= 0.6, "{:.2f}×"),
        ("protected ≥ 2× HAProxy jwt_verify ES256 (req/s)", h.get("protected_vs_haproxy"), lambda v: v >= 2.0, "{:.2f}×"),
        ("protected ≥ 2× Envoy jwt_authn ES256 (req/s)", h.get("protected_vs_envoy"), lambda v: v >= 2.0, "{:.2f}×"),
        ("protected p99 ≤ nginx proxy_pass p99", h.get("protected_p99_vs_nginx_p99"), lambda v: v <= 1.0, "{:.2f}×"),
        ("access cookie ≥ 0.95× bearer header (req/s)", h.get("cookie_vs_bearer"), lambda v: v >= 0.95, "{:.2f}×"),
    ]


def md_tables(res):
    lines = [
        "| target | req/s (median, min–max) | p50 ms | p90 ms | p99 ms | p99.9 ms | errors / non-2xx | proxy CPU s per 10k req | proxy peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in res.get(KEY) or []:
        rss = None if t["peak_rss_kib"] is None else t["peak_rss_kib"] / 1024
        lines.append(
            f"| {t['label']} | {t['rps']:,.0f} ({t['rps_min']:,.0f}–{t['rps_max']:,.0f}) | {fmt(t['p50_ms'], '{:.3f}')} | "
            f"{fmt(t['p90_ms'], '{:.3f}')} | {fmt(t['p99_ms'], '{:.3f}')} | {fmt(t['p99.9_ms'], '{:.3f}')} | "
            f"{t['errors']} / {t['non_2xx']} | {fmt(t['cpu_s_per_10k'], '{:.3f}')} | {fmt(rss, '{:.1f}')} |"
        )
    lines.append("")
    return lines


def charts(res):
    return {"latency.svg": render_svg(res)}


def render_svg(res):
    """Latency percentiles per target (and the protected route during the login storm), log y."""
    pcts = ["p50_ms", "p90_ms", "p99_ms", "p99.9_ms"]
    names = ["p50", "p90", "p99", "p99.9"]
    series = [(t["label"], [t[p] for p in pcts]) for t in res.get(KEY) or []]
    st = res.get("login_storm")
    if st:
        series.append(("protected, during login storm", [st["storm"][p] for p in pcts]))
    vals = [v for _, vs in series for v in vs if v]
    lo = 10 ** math.floor(math.log10(min(vals))) if vals else 0.01
    hi = 10 ** math.ceil(math.log10(max(vals))) if vals else 10
    if hi <= lo:
        hi = lo * 10
    W, H = 820, 440
    L, R, T, B = 70, 260, 56, 50
    pw, ph = W - L - R, H - T - B

    def y(v):
        v = max(v, lo)
        return T + ph - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * ph

    def x(i):
        return L + pw * (i + 0.5) / len(pcts)

    out = svg_head(res, W, H, L, "Latency percentiles per target (ms, log scale; lower is better)")
    dec = lo
    while dec <= hi * 1.0001:
        for m in (1, 2, 5):
            v = dec * m
            if v < lo * 0.9999 or v > hi * 1.0001:
                continue
            yy = y(v)
            out.append(f'<line x1="{L}" y1="{yy:.1f}" x2="{L + pw}" y2="{yy:.1f}" stroke="{"#ccc" if m == 1 else "#eee"}"/>')
            label = f"{v:g}"
            out.append(f'<text x="{L - 6}" y="{yy + 4:.1f}" text-anchor="end" fill="#333">{label}</text>')
        dec *= 10
    out.append(f'<line x1="{L}" y1="{T}" x2="{L}" y2="{T + ph}" stroke="#333"/>')
    out.append(f'<line x1="{L}" y1="{T + ph}" x2="{L + pw}" y2="{T + ph}" stroke="#333"/>')
    for i, n in enumerate(names):
        out.append(f'<text x="{x(i):.1f}" y="{T + ph + 20}" text-anchor="middle">{n}</text>')
    out.append(f'<text x="16" y="{T + ph / 2:.0f}" transform="rotate(-90 16 {T + ph / 2:.0f})" text-anchor="middle">ms</text>')
    for k, (label, vs) in enumerate(series):
        c = COLORS[k % len(COLORS)]
        dash = ' stroke-dasharray="5,3"' if "storm" in label else ""
        pts = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(vs) if v)
        out.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="2"{dash}/>')
        for i, v in enumerate(vs):
            if v:
                out.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="3.5" fill="{c}"><title>{esc(label)} {names[i]}: {v:.3f} ms</title></circle>')
        ly = T + 10 + k * 22
        out.append(f'<line x1="{L + pw + 20}" y1="{ly}" x2="{L + pw + 44}" y2="{ly}" stroke="{c}" stroke-width="3"{dash}/>')
        out.append(f'<text x="{L + pw + 50}" y="{ly + 4}">{esc(label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
