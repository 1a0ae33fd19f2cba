"""Facts recorded with every run (machine, commit, tool versions) and the run's database.

Absolute numbers on a small shared machine mean little without knowing which machine, which
commit and which tools produced them: results.json keeps all of it.
"""

import os
import platform
import shutil
import subprocess
import sys

from .procs import ROOT


def sh(argv, default=""):
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return default


def first_line(argv):
    """First line of a tool's version output (stdout or stderr), or None."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return None


def machine_info():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
            mem = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    osname = ""
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    osname = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory": mem,
        "kernel": platform.release(),
        "os": osname,
        "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
    }


def git_info():
    commit = sh(["git", "-C", ROOT, "rev-parse", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", ROOT, "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock", "migrations"],
        capture_output=True,
        text=True,
        timeout=20,
    ).stdout
    return {"commit": commit, "uncommitted_changes_in": sorted({line[3:] for line in dirty.splitlines() if line.strip()})}


def tool_versions(loader, upstream_kind, peer_modules, oha):
    out = {
        "load_generator": first_line(["wrk", "-v"]) if loader.kind == "wrk" else "python loadgen.py (fallback)",
        "upstream": first_line(["nginx", "-v"]) if upstream_kind == "nginx" else "python upstream.py (fallback)",
    }
    for m in peer_modules:
        out[m.NAME] = m.version()
    if oha:
        out["oha"] = first_line([oha, "--version"])
    out["python"] = sys.version.split()[0]
    return out


def db_urls(name):
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    head = base.rsplit("/", 1)[0]
    return f"{head}/{name}", f"{head}/postgres"


def psql(url, sql, timeout=60):
    """Runs one statement with psql; True when it succeeded (False also when psql is missing)."""
    if not shutil.which("psql"):
        return False
    r = subprocess.run(["psql", url, "-qc", sql], capture_output=True, text=True, timeout=timeout)
    return r.returncode == 0


def drop_database(admin_url, name):
    return psql(admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
