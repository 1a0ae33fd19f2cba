"""Open loop: latency at a fixed request rate, and the latency each proxy adds to it.

Closed-loop latency at saturation is mostly queueing (p50 ≈ connections ÷ throughput). A real
service runs below saturation, where what matters is what a proxy adds to each request: oha
sends at a fixed rate (25 %, 50 %, 75 % of portcullis protected's closed-loop saturation) and,
with --latency-correction, counts from when a request was due, so a stall is not hidden by the
requests it held back. Added latency = the target's percentile − direct's at the same rate.
Renders added-latency.svg.
"""

import math

from ..generators import Oha
from ..peers import gateway
from ..procs import log
from ..report import COLORS, esc, fmt, svg_head

KEY = "open_loop"
ORDER = 20
TITLE = "open-loop latency"
PEERS = True
ESSENTIAL = False
PCTS = ("p50_ms", "p99_ms", "p99.9_ms")


def options(ap):
    ap.add_argument("--open-loop-rates", help="fractions of protected's saturation req/s (full 0.25,0.5,0.75; smoke 0.5)")
    ap.add_argument("--open-loop-duration", type=int, help="seconds per open-loop run (full 10, smoke 2)")
    ap.add_argument("--open-loop-connections", type=int, default=64)


def run(ctx):
    args = ctx.args
    oha = Oha(ctx.load_cpu)
    if not oha.path:
        ctx.notes.append("open loop not measured: oha not installed (cargo install oha --locked)")
        return None
    base = next((t for t in ctx.res.get("targets") or [] if t["name"] == "protected"), None)
    if not base or not base["rps"]:
        raise RuntimeError("no closed-loop saturation rate of the protected route to start from")
    fractions = [float(x) for x in (args.open_loop_rates or ("0.5" if args.smoke else "0.25,0.5,0.75")).split(",")]
    duration = args.open_loop_duration or (2 if args.smoke else 10)
    out = {
        "base": "protected",
        "saturation_rps": base["rps"],
        "connections": args.open_loop_connections,
        "duration_s": duration,
        "latency_correction": True,
        "rates": [],
    }
    for k, frac in enumerate(fractions):
        rate = max(1, round(base["rps"] * frac))
        row = {"fraction": frac, "rate": rate, "targets": {}}
        paced = [t for t in ctx.targets if t["name"] not in gateway.BROWSER_TARGETS]
        order = paced[k % len(paced) :] + paced[: k % len(paced)]
        for t in order:
            r = oha.run(t["url"], rate, args.open_loop_connections, duration, t["headers"])
            row["targets"][t["name"]] = r
            log(
                f"open loop {frac:.0%} ({rate}/s) {t['name']:>9}: {r['rps']:.0f} req/s  p50 {fmt(r['p50_ms'], '{:.3f}')}  "
                f"p99 {fmt(r['p99_ms'], '{:.3f}')}  p99.9 {fmt(r['p99.9_ms'], '{:.3f}')} ms  errors {r['errors']} non-2xx {r['non_2xx']}"
            )
        direct = row["targets"].get("direct")
        row["added"] = {}
        if direct:
            for name, r in row["targets"].items():
                if name != "direct":
                    row["added"][name] = {
                        p: (round(r[p] - direct[p], 4) if (r[p] is not None and direct[p] is not None) else None) for p in PCTS
                    }
        out["rates"].append(row)
    out["labels"] = {t["name"]: t["label"] for t in ctx.targets}
    return out


def at(res, fraction):
    for row in (res.get(KEY) or {}).get("rates", []):
        if abs(row["fraction"] - fraction) < 1e-9:
            return row
    return None


def headline(res):
    row = at(res, 0.5)
    if not row:
        return {"open_loop_50_added_p99_protected_vs_nginx": None}
    p = row["added"].get("protected", {}).get("p99_ms")
    n = row["added"].get("nginx", {}).get("p99_ms")
    return {
        "open_loop_50_added_p99_protected_ms": p,
        "open_loop_50_added_p99_nginx_ms": n,
        "open_loop_50_added_p99_protected_vs_nginx": round(p / n, 3) if (p is not None and n and n > 0) else None,
    }


def verdicts(h):
    return [
        (
            "open loop at 50 %: protected added p99 ≤ 1.5× nginx's",
            h.get("open_loop_50_added_p99_protected_vs_nginx"),
            lambda v: v <= 1.5,
            "{:.2f}×",
        )
    ]


def md_tables(res):
    ol = res.get(KEY)
    if not ol or not ol["rates"]:
        return []
    labels = ol.get("labels", {})
    lines = [
        f"Open loop (oha, fixed rate = a fraction of protected's {ol['saturation_rps']:,.0f} req/s saturation, "
        f"{ol['connections']} connections, {ol['duration_s']} s per target, latency corrected for coordinated omission; "
        "added = target − direct at the same rate; ms):",
        "",
        "| target | rate | achieved req/s | p50 | p99 | p99.9 | added p50 | added p99 | added p99.9 | errors / non-2xx |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    saturation = {t["name"]: t["rps"] for t in res.get("targets") or []}
    over = False
    for name in labels:
        for row in ol["rates"]:
            r = row["targets"].get(name)
            if not r:
                continue
            a = row["added"].get(name, {})
            mark = " †" if row["rate"] > (saturation.get(name) or float("inf")) else ""
            over = over or bool(mark)
            lines.append(
                f"| {labels[name]} | {row['fraction']:.0%} ({row['rate']:,}/s) | {r['rps']:,.0f}{mark} | {fmt(r['p50_ms'], '{:.3f}')} | "
                f"{fmt(r['p99_ms'], '{:.3f}')} | {fmt(r['p99.9_ms'], '{:.3f}')} | {fmt(a.get('p50_ms'), '{:.3f}')} | "
                f"{fmt(a.get('p99_ms'), '{:.3f}')} | {fmt(a.get('p99.9_ms'), '{:.3f}')} | {r['errors']} / {r['non_2xx']} |"
            )
    lines.append("")
    if over:
        lines += ["† the rate is above this target's closed-loop saturation: it cannot keep up, its queue grows for the whole run.", ""]
    return lines


def charts(res):
    ol = res.get(KEY)
    if not ol or not ol["rates"] or not any(row["added"] for row in ol["rates"]):
        return {}
    return {"added-latency.svg": render_svg(res, ol)}


def ticks(lo, hi):
    """A readable linear axis covering lo..hi (and 0): 1, 2 or 5 × a power of ten, ~5 ticks."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    raw = (hi - lo) / 5 or 0.01
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    lo, hi = math.floor(lo / step) * step, math.ceil(hi / step) * step
    return lo, max(hi, lo + step), step


def render_svg(res, ol):
    """Bars of the latency each proxy adds, one panel per percentile (own linear scale, since
    added p50 and p99 differ by orders of magnitude), grouped by rate."""
    labels = ol.get("labels", {})
    names = [n for n in labels if n != "direct" and any(n in row["added"] for row in ol["rates"])]
    saturation = {t["name"]: t["rps"] for t in res.get("targets") or []}

    def over(row, n):
        """Rate above n's closed-loop saturation: seconds of queueing, drawn as a mark only."""
        return row["rate"] > (saturation.get(n) or float("inf"))

    panels = ("p50_ms", "p99_ms")
    W, H = 820, 440
    L, R, T, B = 70, 260, 56, 70
    gap = 60
    pw = (W - L - R - gap * (len(panels) - 1)) / len(panels)
    ph = H - T - B
    out = svg_head(res, W, H, L, "Latency each proxy adds over direct at a fixed rate (ms; lower is better)")
    for j, p in enumerate(panels):
        x0 = L + j * (pw + gap)
        vals = [row["added"].get(n, {}).get(p) for row in ol["rates"] for n in names if not over(row, n)]
        vals = [v for v in vals if v is not None] or [0.0]
        lo, hi, step = ticks(min(vals), max(vals))

        def y(v):
            return T + ph - (v - lo) / (hi - lo) * ph

        v = lo
        while v <= hi + step / 2:
            yy = y(v)
            out.append(f'<line x1="{x0:.1f}" y1="{yy:.1f}" x2="{x0 + pw:.1f}" y2="{yy:.1f}" stroke="{"#999" if abs(v) < step / 2 else "#eee"}"/>')
            out.append(f'<text x="{x0 - 6:.1f}" y="{yy + 4:.1f}" text-anchor="end" fill="#333">{v:.4g}</text>')
            v += step
        out.append(f'<line x1="{x0:.1f}" y1="{T}" x2="{x0:.1f}" y2="{T + ph}" stroke="#333"/>')
        out.append(f'<text x="{x0 + pw / 2:.1f}" y="{T + ph + 40}" text-anchor="middle" font-weight="bold">added {p[:-3]}</text>')
        gw = pw / len(ol["rates"])
        bw = gw * 0.8 / max(1, len(names))
        for g, row in enumerate(ol["rates"]):
            gx = x0 + g * gw + gw * 0.1
            for k, n in enumerate(names):
                val = row["added"].get(n, {}).get(p)
                if val is None:
                    continue
                if over(row, n):
                    out.append(
                        f'<text x="{gx + (k + 0.5) * bw:.1f}" y="{y(0) - 4:.1f}" text-anchor="middle" fill="{COLORS[k % len(COLORS)]}">†'
                        f"<title>{esc(labels[n])}, {row['fraction']:.0%} load: above its saturation, added {p[:-3]} {val:.0f} ms</title></text>"
                    )
                    continue
                top, bottom = (y(val), y(0)) if val >= 0 else (y(0), y(val))
                out.append(
                    f'<rect x="{gx + k * bw:.1f}" y="{top:.1f}" width="{max(1.0, bw - 1):.1f}" height="{max(0.5, bottom - top):.1f}" '
                    f'fill="{COLORS[k % len(COLORS)]}"><title>{esc(labels[n])}, {row["fraction"]:.0%} load '
                    f'({row["rate"]:,}/s), added {p[:-3]}: {val:.3f} ms</title></rect>'
                )
            out.append(f'<text x="{x0 + g * gw + gw / 2:.1f}" y="{T + ph + 18}" text-anchor="middle">{row["fraction"]:.0%}</text>')
    out.append(f'<text x="16" y="{T + ph / 2:.0f}" transform="rotate(-90 16 {T + ph / 2:.0f})" text-anchor="middle">added ms</text>')
    for k, n in enumerate(names):
        ly = T + 10 + k * 22
        out.append(f'<rect x="{W - R + 20}" y="{ly - 6}" width="24" height="12" fill="{COLORS[k % len(COLORS)]}"/>')
        out.append(f'<text x="{W - R + 50}" y="{ly + 4}">{esc(labels[n])}</text>')
    notes = (
        "rate: % of protected's closed-loop",
        f"saturation ({ol['saturation_rps']:,.0f} req/s); oha,",
        "latency-corrected. †: rate above that",
        "target's saturation (off the chart)",
    )
    for i, line in enumerate(notes):
        out.append(f'<text x="{W - R + 20}" y="{T + 20 + (len(names) + i) * 16 + len(names) * 6}" fill="#555" font-size="11">{esc(line)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
