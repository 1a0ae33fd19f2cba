"""The gateway's peak RSS after the login, storm and refresh loads (argon2 memory included).

The closed-loop table shows the peak after the proxy rounds alone; this is the peak a busy
instance reaches once the auth endpoints have run too.
"""

from ..procs import peak_rss_kib
from ..report import fmt

KEY = "gateway_peak_rss_kib_end"
ORDER = 70
TITLE = "gateway peak RSS"
PEERS = False
ESSENTIAL = False


def run(ctx):
    return peak_rss_kib(ctx.gw.pid)


def md_bullets(res):
    end_rss = res.get(KEY)
    if not end_rss:
        return []
    proxy_rounds = next((t["peak_rss_kib"] / 1024 for t in res.get("targets") or [] if t["name"] == "protected"), None)
    return [
        f"- Gateway peak RSS (VmHWM) at the end of the run, after the login, storm and refresh loads: "
        f"{end_rss / 1024:.0f} MiB (after the proxy rounds alone: {fmt(proxy_rounds, '{:.0f}')} MiB)."
    ]
