"""--profile: a flat `perf` profile of the gateway during one protected-route run.

Where the gateway's CPU goes per request is what decides what to optimize; written to
profile-protected.txt next to the results.
"""

import os
import re
import shutil
import subprocess
import time

from ..client import API_PATH
from ..generators import summarize
from ..procs import ROOT, log

KEY = "profile"
ORDER = 100
TITLE = "profile"
PEERS = False
ESSENTIAL = False


def options(ap):
    ap.add_argument("--profile", action="store_true", help="after the run, perf-profile the gateway on the protected route")


def wanted(args):
    return args.profile


def run(ctx):
    args, gw = ctx.args, ctx.gw
    if not shutil.which("perf"):
        raise RuntimeError("perf not installed (apt-get install linux-perf)")
    data = os.path.join(ctx.tmp, "perf.data")
    rec = subprocess.Popen(
        ["perf", "record", "-F", "1999", "-p", str(gw.pid), "-o", data, "--", "sleep", str(args.duration)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    time.sleep(0.3)
    url = f"http://127.0.0.1:{gw.port}{API_PATH}"
    r = summarize(ctx.loader.run(url, args.connections, args.duration, ctx.auth_header, threads=args.wrk_threads))
    _, err = rec.communicate(timeout=args.duration + 60)
    if rec.returncode != 0:
        raise RuntimeError(f"perf record failed: {err.decode(errors='replace')[-300:]}")
    parts = [f"# perf profile of portcullis (pid {gw.pid}) during a protected-route run: {r['rps']:.0f} req/s\n"]
    for sort, limit in (("dso", "0.5"), ("symbol", "0.4")):
        rep = subprocess.run(
            ["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", sort, "--percent-limit", limit],
            capture_output=True,
            text=True,
            timeout=300,
        )
        body = [
            re.sub(r"(\s+-)+\s*$", "", line).rstrip()
            for line in rep.stdout.splitlines()
            if line.strip() and not line.startswith("#")
        ]
        parts.append(f"## by {sort} (>= {limit}%)\n" + "\n".join(body[:80]) + "\n")
    path = os.path.join(ctx.out_dir, "profile-protected.txt")
    os.makedirs(ctx.out_dir, exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(parts))
    log(f"profile written to {path}")
    return os.path.relpath(path, ROOT) if path.startswith(ROOT) else path
