"""Processes the harness starts and what it reads about them from /proc.

Every server runs in its own session so that it (and its children, e.g. nginx workers) can be
stopped by process group on exit; CPU seconds and peak RSS come from /proc so that no tool has
to be installed, and `disturbance` records whether someone else's build ran during a round.
"""

import os
import signal
import socket
import subprocess
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # benches/load
ROOT = os.path.dirname(os.path.dirname(HERE))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Procs:
    """Every process the harness starts, each in its own session, stopped by pid on exit."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.items = []

    def start(self, name, argv, cpu=None, env=None, cwd=None):
        if cpu is not None:
            argv = ["taskset", "-c", cpu] + argv
        logf = open(os.path.join(self.tmp, f"{name}.log"), "ab")
        p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        p.bench_name = name
        p.bench_log = logf.name
        self.items.append(p)
        return p

    def stop(self, p, timeout=5.0):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(5)
        if p in self.items:
            self.items.remove(p)

    def stop_all(self):
        for p in list(reversed(self.items)):
            self.stop(p, timeout=3.0)


def tail(path, n=30):
    try:
        with open(path, "rb") as f:
            return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
    except OSError:
        return ""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_pids(pid):
    """pid and all its descendants (via /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def disturbance(ours=()):
    """1-minute load average and the number of processes that are not ours and compete: cargo,
    rustc, clippy, and other portcullis/wrk instances (another benchmark)."""
    mine = set()
    for pid in ours:
        mine.update(tree_pids(pid))
    builds = 0
    for p in os.listdir("/proc"):
        if p.isdigit() and int(p) not in mine:
            try:
                with open(f"/proc/{p}/comm") as f:
                    if f.read().strip() in ("cargo", "rustc", "clippy-driver", "cargo-clippy", "portcullis", "wrk"):
                        builds += 1
            except OSError:
                pass
    with open("/proc/loadavg") as f:
        load = float(f.read().split()[0])
    return load, builds


def cpu_seconds(pid):
    """utime + stime of a process tree, in seconds (children still running, not reaped ones)."""
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def peak_rss_kib(pid):
    """Sum of VmHWM over a process tree, KiB."""
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        except (OSError, ValueError):
            pass
    return total
