"""The static upstream behind every target: nginx answering `{"ok":true}`, else upstream.py.

One upstream for all targets, so that the targets differ only in the proxy in front of it;
"direct" measures it alone, the limit of the load core.
"""

import os
import shutil
import sys

from .client import wait_http
from .peers.nginx import start_nginx
from .procs import HERE, free_port, log, tail


def start_nginx_upstream(procs, tmp, cpu, port, name="nginx-upstream", workers=1, status_path=None):
    """`status_path`: also serve nginx's stub_status there (accepted connections and requests,
    counted by nginx itself; measurements/realistic.py derives upstream keep-alive reuse)."""
    status = f"""
    location = {status_path} {{
      stub_status;
    }}""" if status_path else ""
    return start_nginx(procs, name, tmp, cpu, f"""  server {{
    listen 127.0.0.1:{port} backlog=4096;{status}
    location / {{
      default_type application/json;
      return 200 '{{"ok":true}}\\n';
    }}
  }}""", workers)


def start(ctx, cpu, name="nginx-upstream", workers=1):
    """Starts the upstream on a free port pinned to `cpu` (None: unpinned) with `workers` nginx
    workers; returns (port, kind) or None."""
    port = free_port()
    if ctx.args.upstream == "auto" and shutil.which("nginx"):
        p = start_nginx_upstream(ctx.procs, ctx.tmp, cpu, port, name, workers)
        if wait_http(port, "/", 10, p):
            return port, "nginx"
        ctx.notes.append(f"nginx upstream did not start ({tail(p.bench_log, 3)}); using the built-in upstream")
        ctx.procs.stop(p)
    p = ctx.procs.start(name.replace("nginx-", ""), [sys.executable, os.path.join(HERE, "upstream.py"), str(port)], cpu=cpu)
    if not wait_http(port, "/", 10, p):
        log(f"built-in upstream did not start:\n{tail(p.bench_log)}")
        return None
    ctx.notes.append("nginx upstream not used (not installed, or --upstream python): the built-in Python upstream ran, and it limits every target")
    return port, "python"
