"""Load generators: wrk (or the Python fallback, loadgen.py) for closed-loop runs, oha for
open-loop (fixed-rate) runs.

wrk and loadgen.py print one `WRKJSON {...}` line (wrk through wrk.lua), so everything
downstream reads one format; `summarize` reduces it to the fields results.json keeps. oha's JSON
is reduced to the same latency fields.
"""

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys

from .procs import HERE


class Loader:
    """Closed loop: C connections, each sending its next request when the previous answer is in.
    Pinned to `cpu` (None: not pinned)."""

    def __init__(self, args, tmp, cpu):
        self.args = args
        self.tmp = tmp
        self.cpu = cpu
        self.wrk = None if args.loadgen == "python" else shutil.which("wrk")
        self.kind = "wrk" if self.wrk else "python"

    def argv(self, url, connections, duration, headers, threads):
        if self.wrk:
            argv = [self.wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "5s"]
            argv += ["-s", os.path.join(HERE, "wrk.lua")]
            for h in headers:
                argv += ["-H", h]
            argv.append(url)
        else:
            argv = [sys.executable, os.path.join(HERE, "loadgen.py"), url]
            argv += ["-c", str(connections), "-d", str(duration)]
            for h in headers:
                argv += ["-H", h]
        if self.cpu is not None:
            argv = ["taskset", "-c", self.cpu] + argv
        return argv

    def start(self, url, connections, duration, headers=(), mode="get", env=None, threads=1):
        e = dict(os.environ)
        e["BENCH_MODE"] = mode
        e["BENCH_THREADS"] = str(threads)
        e.update(env or {})
        threads = min(threads, connections)
        return subprocess.Popen(
            self.argv(url, connections, duration, headers, threads),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=e,
            start_new_session=True,
        )

    @staticmethod
    def finish(p, duration):
        try:
            out, _ = p.communicate(timeout=duration + 30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, _ = p.communicate()
        text = out.decode(errors="replace")
        for line in text.splitlines():
            if line.startswith("WRKJSON "):
                return json.loads(line[8:])
        raise RuntimeError(f"load generator printed no result:\n{text[-2000:]}")

    def run(self, url, connections, duration, headers=(), mode="get", env=None, threads=1):
        return self.finish(self.start(url, connections, duration, headers, mode, env, threads), duration)


def summarize(res):
    """One load-generator result -> the fields we keep."""
    secs = res["duration_us"] / 1e6
    errs = res["errors"]
    lat = res["latency_us"]
    return {
        "requests": res["requests"],
        "seconds": round(secs, 3),
        "rps": round(res["requests"] / secs, 1) if secs else 0.0,
        "errors": errs["connect"] + errs["read"] + errs["write"] + errs["timeout"],
        "non_2xx": errs["status"],
        "p50_ms": lat["p50"] / 1000,
        "p90_ms": lat["p90"] / 1000,
        "p99_ms": lat["p99"] / 1000,
        "p99.9_ms": lat["p99.9"] / 1000,
        "max_ms": lat["max"] / 1000,
        "broken": res.get("broken", 0),
    }


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


class Oha:
    """Open loop: oha sends `rate` requests/s over `connections` keep-alive connections whatever
    the answers' pace; with --latency-correction a request's latency counts from when it was
    due, not from when a free connection sent it (no coordinated omission). Pinned like wrk."""

    def __init__(self, cpu):
        self.cpu = cpu
        self.path = shutil.which("oha") or next(
            (p for p in [os.path.expanduser("~/.cargo/bin/oha")] if os.access(p, os.X_OK)), None
        )

    def run(self, url, rate, connections, duration, headers=()):
        argv = [self.path, "-z", f"{duration}s", "-c", str(connections), "-q", str(rate), "--latency-correction"]
        argv += ["--no-tui", "--output-format", "json", "--worker-threads", "1"]
        for h in headers:
            argv += ["-H", h]
        argv.append(url)
        if self.cpu is not None:
            argv = ["taskset", "-c", self.cpu] + argv
        r = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
        try:
            out = json.loads(r.stdout)
        except ValueError:
            raise RuntimeError(f"oha printed no JSON (exit {r.returncode}): {r.stdout[-500:]} {r.stderr[-500:]}") from None
        summary = out.get("summary") or {}
        pct = out.get("latencyPercentiles") or {}
        codes = out.get("statusCodeDistribution") or {}
        ok = sum(n for c, n in codes.items() if str(c).startswith("2"))
        # requests still in flight when -z ends are aborted: not an error of the target
        errors = sum(n for e, n in (out.get("errorDistribution") or {}).items() if "deadline" not in e)
        secs = summary.get("total") or duration

        def ms(key):
            v = pct.get(key)
            return None if v is None else round(v * 1000, 4)

        return {
            "rate": rate,
            "rps": round(ok / secs, 1),
            "requests": sum(codes.values()),
            "non_2xx": sum(codes.values()) - ok,
            "errors": errors,
            "p50_ms": ms("p50"),
            "p90_ms": ms("p90"),
            "p99_ms": ms("p99"),
            "p99.9_ms": ms("p99.9"),
            "max_ms": None if summary.get("slowest") is None else round(summary["slowest"] * 1000, 4),
        }
