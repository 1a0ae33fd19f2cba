#!/usr/bin/env python3
"""Load harness for portcullis (run it through benches/load/run.sh, which installs and builds).

One machine, loopback only. The gateway (and the proxy peers) are pinned to one core, the load
generator and the static upstream to the other. Measured, in alternating rounds:

  direct     load generator -> upstream                      (the limit of the load core)
  public     -> portcullis, route auth = "none"              -> upstream
  protected  -> portcullis, auth = "required", roles ["user"], valid ES256 token -> upstream
  nginx      -> nginx proxy_pass (keepalive upstream)        -> upstream           (if installed)
  haproxy    -> HAProxy jwt_verify ES256 + exp/iss/aud/role  -> upstream           (if installed)

then login throughput against the raw argon2 rate, protected p99 under a login storm vs. idle,
refresh throughput (rotating token chains), and revocation propagation between two instances.
Writes results.json, results.md and latency.svg into --out. Standard library only.

`bench.py --render DIR` re-renders results.md and latency.svg from DIR/results.json.
`bench.py --update-readme README.md DIR` replaces the generated block of the README's
Benchmarks section (between the bench:begin/bench:end markers) with DIR/results.md.
"""

import argparse
import base64
import datetime
import fcntl
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PASSWORD = "bench-password-0123456789"
LOCK_PATH = os.path.join(tempfile.gettempdir(), "portcullis-load-bench.lock")
API_PATH = "/api/bench"
PUBLIC_PATH = "/public/bench"


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------
# processes


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


# ----------------------------------------------------------------------------------------------
# HTTP helpers (client side of setup and of the revocation measurement)


def request(port, method, path, body=None, headers=None, timeout=10.0, conn=None):
    """One request; returns (status, body bytes). Reuses `conn` when given."""
    own = conn is None
    if own:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    hdrs = dict(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        out = resp.status, resp.read()
    finally:
        if own:
            conn.close()
    return out


def wait_http(port, path, deadline_s, proc=None, want=200):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            if request(port, "GET", path, timeout=1.0)[0] == want:
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


# ----------------------------------------------------------------------------------------------
# load generation


class Loader:
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


# ----------------------------------------------------------------------------------------------
# servers


def start_nginx(procs, name, tmp, cpu, http_body):
    """One nginx instance (1 worker, own prefix, no access log) serving `http_body`."""
    prefix = os.path.join(tmp, name)
    os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = f"""{user}worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
{http_body}
}}
"""
    path = os.path.join(prefix, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    return procs.start(name, ["nginx", "-p", prefix, "-c", path], cpu=cpu)


def start_nginx_upstream(procs, tmp, cpu, port):
    return start_nginx(procs, "nginx-upstream", tmp, cpu, f"""  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      default_type application/json;
      return 200 '{{"ok":true}}\\n';
    }}
  }}""")


def start_nginx_proxy(procs, tmp, cpu, port, upstream_port):
    return start_nginx(procs, "nginx-proxy", tmp, cpu, f"""  upstream up {{
    server 127.0.0.1:{upstream_port};
    keepalive 128;
    keepalive_requests 10000000;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}""")


def start_haproxy(procs, tmp, cpu, port, upstream_port, pubkey, issuer, audience):
    conf = f"""global
  nbthread 1
  maxconn 4096
  log stderr format raw local0 err

defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  timeout http-keep-alive 120s
  option http-keep-alive
  http-reuse always

frontend bench
  bind 127.0.0.1:{port}
  http-request deny deny_status 401 unless {{ http_auth_bearer -m found }}
  http-request set-var(txn.bearer) http_auth_bearer
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')
  http-request set-var(txn.iss) var(txn.bearer),jwt_payload_query('$.iss')
  http-request set-var(txn.aud) var(txn.bearer),jwt_payload_query('$.aud')
  http-request set-var(txn.role) var(txn.bearer),jwt_payload_query('$.role')
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
  http-request set-var(txn.now) date()
  http-request deny deny_status 401 unless {{ var(txn.alg) -m str ES256 }}
  http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_verify(txn.alg,"{pubkey}") -m int 1 }}
  http-request deny deny_status 401 unless {{ var(txn.iss) -m str {issuer} }}
  http-request deny deny_status 401 unless {{ var(txn.aud) -m str {audience} }}
  http-request deny deny_status 401 if {{ var(txn.exp),sub(txn.now) -m int lt 0 }}
  http-request deny deny_status 403 unless {{ var(txn.role) -m str user }}
  default_backend up

backend up
  server up1 127.0.0.1:{upstream_port} maxconn 1000
"""
    path = os.path.join(tmp, "haproxy.cfg")
    with open(path, "w") as f:
        f.write(conf)
    return procs.start("haproxy", ["haproxy", "-db", "-f", path], cpu=cpu)


def gateway_config(port, admin_port, db_url, keys_dir, upstream_port):
    return f"""# portcullis load-harness config (generated by benches/load/bench.py)
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"
threads = 1
shutdown_grace_secs = 1

[database]
url = "{db_url}"
pool_size = 16

[tokens]
algorithm = "ES256"
keys_dir = "{keys_dir}"
access_ttl_secs = 7200

[rate_limit]
login_per_minute_per_ip = 0
login_per_minute_per_account = 0
register_per_minute_per_ip = 0

[[upstream]]
name = "api"
addrs = ["127.0.0.1:{upstream_port}"]

[[route]]
prefix = "/api/"
upstream = "api"
auth = "required"
roles = ["user"]

[[route]]
prefix = "/public/"
upstream = "api"
auth = "none"
"""


class Gateway:
    def __init__(self, procs, tmp, name, binary, cpu, db_url, keys_dir, upstream_port):
        self.port = free_port()
        self.admin_port = free_port()
        self.config = os.path.join(tmp, f"{name}.toml")
        with open(self.config, "w") as f:
            f.write(gateway_config(self.port, self.admin_port, db_url, keys_dir, upstream_port))
        env = dict(os.environ)
        env["RUST_LOG"] = "warn"
        env["DATABASE_URL"] = db_url
        env.pop("PORTCULLIS_CONFIG", None)
        self.proc = procs.start(name, [binary, "--config", self.config, "serve"], cpu=cpu, env=env, cwd=tmp)
        self.pid = self.proc.pid  # taskset execs the binary: same pid

    def wait_ready(self, seconds):
        return wait_http(self.admin_port, "/readyz", seconds, self.proc)


def es256_public_pem(jwks):
    """PEM SubjectPublicKeyInfo of the first P-256 key in a JWKS (no openssl needed)."""
    for k in jwks.get("keys", []):
        if k.get("kty") == "EC" and k.get("crv") == "P-256":

            def b64(s):
                return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

            spki = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")
            der = spki + b"\x04" + b64(k["x"]) + b64(k["y"])
            body = base64.encodebytes(der).decode().replace("\n", "")
            lines = [body[i : i + 64] for i in range(0, len(body), 64)]
            return "-----BEGIN PUBLIC KEY-----\n" + "\n".join(lines) + "\n-----END PUBLIC KEY-----\n"
    raise RuntimeError(f"no P-256 key in JWKS: {jwks}")


# ----------------------------------------------------------------------------------------------
# environment facts


def sh(argv, default=""):
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return default


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


def tool_versions(loader, upstream_kind):
    def first(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired, IndexError):
            return None

    return {
        "load_generator": first(["wrk", "-v"]) if loader.kind == "wrk" else "python loadgen.py (fallback)",
        "upstream": first(["nginx", "-v"]) if upstream_kind == "nginx" else "python upstream.py (fallback)",
        "nginx": first(["nginx", "-v"]) if shutil.which("nginx") else None,
        "haproxy": first(["haproxy", "-v"]) if shutil.which("haproxy") else None,
        "python": sys.version.split()[0],
    }


def db_urls(name):
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    head = base.rsplit("/", 1)[0]
    return f"{head}/{name}", f"{head}/postgres"


def drop_database(admin_url, name):
    if not shutil.which("psql"):
        return False
    r = subprocess.run(
        ["psql", admin_url, "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return r.returncode == 0


# ----------------------------------------------------------------------------------------------
# the measurements


def login(port, email):
    st, body = request(port, "POST", "/auth/login", {"email": email, "password": PASSWORD})
    if st != 200:
        raise RuntimeError(f"login answered {st}: {body[:300]!r}")
    return json.loads(body)


def measure_targets(args, loader, targets, procs_by_target, notes):
    runs = {t["name"]: [] for t in targets}
    warm = max(1, min(2, round(args.duration / 4)))
    for t in targets:
        log(f"warm-up {t['name']} ({warm} s)")
        r = loader.run(t["url"], args.connections, warm, t["headers"], threads=args.wrk_threads)
        if r["requests"] == 0:
            notes.append(f"{t['name']}: no response during warm-up")
    for rnd in range(args.rounds):
        order = targets[rnd % len(targets) :] + targets[: rnd % len(targets)]
        for t in order:
            pid = procs_by_target.get(t["name"])
            load, builds = disturbance(procs_by_target.values())
            c0 = cpu_seconds(pid) if pid else None
            res = summarize(loader.run(t["url"], args.connections, args.duration, t["headers"], threads=args.wrk_threads))
            if pid:
                res["proxy_cpu_s"] = round(cpu_seconds(pid) - c0, 3)
            res["round"] = rnd + 1
            res["loadavg_before"] = load
            res["builds_running"] = builds
            runs[t["name"]].append(res)
            log(
                f"round {rnd + 1}/{args.rounds} {t['name']:>9}: {res['rps']:>9.0f} req/s  "
                f"p50 {res['p50_ms']:.3f}  p99 {res['p99_ms']:.3f}  p99.9 {res['p99.9_ms']:.3f} ms  "
                f"errors {res['errors']} non-2xx {res['non_2xx']}"
            )
    disturbed = sum(1 for rs in runs.values() for r in rs if r["builds_running"])
    if disturbed:
        notes.append(
            f"{disturbed} measured runs had someone else's cargo/rustc or another portcullis/wrk "
            "running (runs[].builds_running in results.json)"
        )
    out = []
    for t in targets:
        rs = runs[t["name"]]
        pid = procs_by_target.get(t["name"])
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


def raw_argon2(args, cpu, notes):
    if not args.argon2_bin or not os.path.exists(args.argon2_bin):
        notes.append("raw argon2 rate not measured (argon2_rate bench binary not built)")
        return None
    argv = [args.argon2_bin, "--bench", "--seconds", str(args.argon2_seconds)]
    if cpu is not None:
        argv = ["taskset", "-c", cpu] + argv
    r = subprocess.run(argv, capture_output=True, text=True, timeout=args.argon2_seconds * 3 + 60)
    for line in r.stdout.splitlines():
        if line.startswith("{"):
            return json.loads(line)
    notes.append(f"argon2_rate printed no result: {r.stdout[-300:]} {r.stderr[-300:]}")
    return None


def login_body(email):
    return json.dumps({"email": email, "password": PASSWORD})


def measure_login(args, loader, gw, email, proxy_cpu, notes):
    """Alternates the raw argon2 rate (gateway idle, same core) and POST /auth/login rounds; the
    ratio is the median of the per-round ratios, so drift of the machine cancels out."""
    url = f"http://127.0.0.1:{gw.port}/auth/login"
    rounds = []
    for rnd in range(args.rounds):
        raw = raw_argon2(args, proxy_cpu, notes)
        c0 = cpu_seconds(gw.pid)
        res = summarize(
            loader.run(url, args.login_connections, args.duration, mode="login", env={"BENCH_BODY": login_body(email)})
        )
        res["gateway_cpu_s"] = round(cpu_seconds(gw.pid) - c0, 3)
        ok = res["requests"] - res["non_2xx"]
        res["ok_per_sec"] = round(ok / res["seconds"], 2) if res["seconds"] else 0.0
        res["raw_argon2"] = raw
        if raw:
            res["ratio"] = round(res["ok_per_sec"] / raw["verifies_per_sec"], 3)
        rounds.append(res)
        log(
            f"login round {rnd + 1}: {res['ok_per_sec']:.1f}/s, p99 {res['p99_ms']:.1f} ms "
            f"(raw argon2 verify {raw and raw['verifies_per_sec']}/s)"
        )
    raws = [r["raw_argon2"] for r in rounds if r["raw_argon2"]]
    login = {
        "connections": args.login_connections,
        "ok_per_sec": median([r["ok_per_sec"] for r in rounds]),
        "p50_ms": median([r["p50_ms"] for r in rounds]),
        "p99_ms": median([r["p99_ms"] for r in rounds]),
        "non_2xx": sum(r["non_2xx"] for r in rounds),
        "errors": sum(r["errors"] for r in rounds),
        "gateway_cpu_ms_per_login": round(
            1000 * sum(r["gateway_cpu_s"] for r in rounds) / max(1, sum(r["requests"] for r in rounds)), 2
        ),
    }
    out = {"login": login, "rounds": rounds}
    if raws:
        out["raw_argon2"] = {
            "m_kib": raws[0]["m_kib"],
            "t": raws[0]["t"],
            "p": raws[0]["p"],
            "verifies_per_sec": median([r["verifies_per_sec"] for r in raws]),
            "hashes_per_sec": median([r["hashes_per_sec"] for r in raws]),
        }
        out["ratio"] = median([r["ratio"] for r in rounds if "ratio" in r])
    return out


def measure_storm(args, loader, gw, token, email):
    url = f"http://127.0.0.1:{gw.port}{API_PATH}"
    login_url = f"http://127.0.0.1:{gw.port}/auth/login"
    hdr = [f"Authorization: Bearer {token}"]
    idle, storm, logins = [], [], []
    for rnd in range(args.rounds):
        r = summarize(loader.run(url, args.connections, args.duration, hdr, threads=args.wrk_threads))
        idle.append(r)
        lp = loader.start(
            login_url,
            args.login_connections,
            args.duration + 2,
            mode="login",
            env={"BENCH_BODY": login_body(email)},
        )
        time.sleep(1.0)
        s = summarize(loader.run(url, args.connections, args.duration, hdr, threads=args.wrk_threads))
        storm.append(s)
        lr = summarize(Loader.finish(lp, args.duration + 2))
        logins.append(lr)
        log(
            f"storm round {rnd + 1}: idle p99 {r['p99_ms']:.3f} ms ({r['rps']:.0f}/s), "
            f"storm p99 {s['p99_ms']:.3f} ms ({s['rps']:.0f}/s, {lr['rps']:.1f} logins/s)"
        )

    def agg(rs):
        return {
            "rps": median([x["rps"] for x in rs]),
            "p50_ms": median([x["p50_ms"] for x in rs]),
            "p90_ms": median([x["p90_ms"] for x in rs]),
            "p99_ms": median([x["p99_ms"] for x in rs]),
            "p99.9_ms": median([x["p99.9_ms"] for x in rs]),
            "errors": sum(x["errors"] for x in rs),
            "non_2xx": sum(x["non_2xx"] for x in rs),
            "runs": rs,
        }

    out = {"idle": agg(idle), "storm": agg(storm), "logins_per_sec": median([x["rps"] for x in logins])}
    if out["idle"]["p99_ms"]:
        out["p99_ratio"] = round(out["storm"]["p99_ms"] / out["idle"]["p99_ms"], 3)
    return out


def measure_refresh(args, loader, gw, email, tmp):
    chains = args.refresh_connections * 2
    tokens = [login(gw.port, email)["refresh_token"] for _ in range(chains)]
    path = os.path.join(tmp, "refresh-tokens.txt")
    with open(path, "w") as f:
        f.write("\n".join(tokens) + "\n")
    url = f"http://127.0.0.1:{gw.port}/auth/refresh"
    c0 = cpu_seconds(gw.pid)
    res = summarize(loader.run(url, args.refresh_connections, args.duration, mode="refresh", env={"BENCH_TOKENS": path}))
    res["gateway_cpu_s"] = round(cpu_seconds(gw.pid) - c0, 3)
    res["connections"] = args.refresh_connections
    res["chains"] = chains
    ok = res["requests"] - res["non_2xx"]
    res["ok_per_sec"] = round(ok / res["seconds"], 1) if res["seconds"] else 0.0
    log(f"refresh: {res['ok_per_sec']:.0f}/s, p99 {res['p99_ms']:.2f} ms, broken chains {res['broken']}")
    return res


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


def measure_revocation(args, gw_a, gw_b, email):
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


def profile_gateway(args, loader, gw, token, tmp, out_dir):
    """perf profile (flat, by symbol) of the gateway during one protected-route run."""
    if not shutil.which("perf"):
        raise RuntimeError("perf not installed (apt-get install linux-perf)")
    data = os.path.join(tmp, "perf.data")
    rec = subprocess.Popen(
        ["perf", "record", "-F", "1999", "-p", str(gw.pid), "-o", data, "--", "sleep", str(args.duration)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    time.sleep(0.3)
    url = f"http://127.0.0.1:{gw.port}{API_PATH}"
    r = summarize(loader.run(url, args.connections, args.duration, [f"Authorization: Bearer {token}"], threads=args.wrk_threads))
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
    path = os.path.join(out_dir, "profile-protected.txt")
    os.makedirs(out_dir, exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(parts))
    log(f"profile written to {path}")
    return os.path.relpath(path, ROOT) if path.startswith(ROOT) else path


# ----------------------------------------------------------------------------------------------
# verdicts, Markdown, SVG


def headline(res):
    t = {x["name"]: x for x in res["targets"]}
    h = {}

    def ratio(a, b):
        return round(a / b, 3) if (a is not None and b) else None

    p = t.get("protected", {}).get("rps")
    h["protected_vs_public"] = ratio(p, t.get("public", {}).get("rps"))
    h["protected_vs_nginx"] = ratio(p, t.get("nginx", {}).get("rps"))
    h["protected_vs_haproxy"] = ratio(p, t.get("haproxy", {}).get("rps"))
    h["protected_vs_direct"] = ratio(p, t.get("direct", {}).get("rps"))
    h["protected_p99_ms"] = t.get("protected", {}).get("p99_ms")
    h["nginx_p99_ms"] = t.get("nginx", {}).get("p99_ms")
    h["protected_p99_vs_nginx_p99"] = ratio(h["protected_p99_ms"], h["nginx_p99_ms"])
    h["login_vs_raw_argon2"] = (res.get("login") or {}).get("ratio")
    h["storm_p99_vs_idle_p99"] = (res.get("login_storm") or {}).get("p99_ratio")
    h["revocation_p99_ms"] = (res.get("revocation") or {}).get("p99_ms")
    return h


def verdicts(h, smoke):
    rows = [
        ("protected ≥ 0.9× public route (req/s)", h["protected_vs_public"], lambda v: v >= 0.9, "{:.2f}×"),
        ("protected ≥ 1.0× nginx proxy_pass (req/s)", h["protected_vs_nginx"], lambda v: v >= 1.0, "{:.2f}×"),
        ("protected ≥ 2× HAProxy jwt_verify ES256 (req/s)", h["protected_vs_haproxy"], lambda v: v >= 2.0, "{:.2f}×"),
        ("protected p99 ≤ nginx proxy_pass p99", h["protected_p99_vs_nginx_p99"], lambda v: v <= 1.0, "{:.2f}×"),
        ("login ≥ 0.9× raw argon2 rate", h["login_vs_raw_argon2"], lambda v: v >= 0.9, "{:.2f}×"),
        ("protected p99 in a login storm ≤ 1.5× idle p99", h["storm_p99_vs_idle_p99"], lambda v: v <= 1.5, "{:.2f}×"),
        ("revocation propagation p99 ≤ 100 ms", h["revocation_p99_ms"], lambda v: v <= 100, "{:.1f} ms"),
    ]
    out = []
    for name, value, ok, fmt in rows:
        if value is None:
            met = None
        elif smoke:
            met = None
        else:
            met = bool(ok(value))
        out.append({"target": name, "value": value, "shown": fmt.format(value) if value is not None else "—", "met": met})
    return out


def fmt(v, spec="{:.2f}", none="—"):
    return none if v is None else spec.format(v)


def render_md(res):
    m = res["machine"]
    pin = res.get("pinning")
    lines = []
    when = res["finished_at"][:16].replace("T", " ")
    lines.append(
        f"Measured {when} UTC on {m['cpu_model']} ({m['nproc']} cores, {m['memory']}), "
        f"{m['os']}, kernel {m['kernel']}; commit `{res['git']['commit'][:12]}`"
        + (f" (uncommitted changes in {', '.join(res['git']['uncommitted_changes_in'])})" if res["git"]["uncommitted_changes_in"] else "")
        + f"; `{res['binary']}`; mode `{res['mode']}`."
    )
    lines.append("")
    if pin:
        lines.append(
            f"Pinning: gateway and proxy peers on CPU {pin['proxy_cpu']}, load generator and upstream on CPU {pin['load_cpu']}. "
            f"{res['settings']['rounds']} alternating rounds × {res['settings']['duration_s']:g} s per target, "
            f"{res['settings']['connections']} connections, {res['tools']['load_generator']}, upstream: {res['tools']['upstream']}."
        )
    else:
        lines.append("No CPU pinning (fewer than 2 CPUs or no taskset): numbers are indicative only.")
    lines.append("")
    lines.append("| target | req/s (median, min–max) | p50 ms | p90 ms | p99 ms | p99.9 ms | errors / non-2xx | proxy CPU s per 10k req | proxy peak RSS MiB |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in res["targets"]:
        rss = None if t["peak_rss_kib"] is None else t["peak_rss_kib"] / 1024
        lines.append(
            f"| {t['label']} | {t['rps']:,.0f} ({t['rps_min']:,.0f}–{t['rps_max']:,.0f}) | {fmt(t['p50_ms'], '{:.3f}')} | "
            f"{fmt(t['p90_ms'], '{:.3f}')} | {fmt(t['p99_ms'], '{:.3f}')} | {fmt(t['p99.9_ms'], '{:.3f}')} | "
            f"{t['errors']} / {t['non_2xx']} | {fmt(t['cpu_s_per_10k'], '{:.3f}')} | {fmt(rss, '{:.1f}')} |"
        )
    lines.append("")
    lines.append("| target (ratios are the headline) | result | met? |")
    lines.append("|---|---:|:---:|")
    for v in res["verdicts"]:
        met = "—" if v["met"] is None else ("met" if v["met"] else "**missed**")
        lines.append(f"| {v['target']} | {v['shown']} | {met} |")
    lines.append("")
    lg = res.get("login") or {}
    if lg:
        l = lg["login"]
        raw = lg.get("raw_argon2")
        rawtxt = (
            f"raw argon2id (m={raw['m_kib']} KiB, t={raw['t']}, p={raw['p']}, one thread on the gateway's core, "
            f"alternating with the login rounds): {raw['verifies_per_sec']:.1f} verifies/s, {raw['hashes_per_sec']:.1f} hashes/s"
            if raw
            else "raw argon2 rate not measured"
        )
        lines.append(
            f"- Login (`POST /auth/login`, {l['connections']} connections): {l['ok_per_sec']:.1f}/s, "
            f"p50 {l['p50_ms']:.1f} ms, p99 {l['p99_ms']:.1f} ms, non-2xx {l['non_2xx']}, "
            f"gateway CPU {l['gateway_cpu_ms_per_login']:.1f} ms per login; {rawtxt}."
        )
    st = res.get("login_storm") or {}
    if st:
        lines.append(
            f"- Protected route during a login storm ({st['logins_per_sec']:.1f} logins/s): p99 "
            f"{fmt(st['storm']['p99_ms'], '{:.3f}')} ms vs. {fmt(st['idle']['p99_ms'], '{:.3f}')} ms idle; "
            f"{st['storm']['rps']:,.0f} vs. {st['idle']['rps']:,.0f} req/s."
        )
    rf = res.get("refresh") or {}
    if rf:
        lines.append(
            f"- Refresh (`POST /auth/refresh`, {rf['connections']} connections each rotating its own token chain): "
            f"{rf['ok_per_sec']:,.0f}/s, p50 {rf['p50_ms']:.2f} ms, p99 {rf['p99_ms']:.2f} ms, broken chains {rf['broken']}, "
            f"gateway CPU {fmt(rf['gateway_cpu_s'] / max(1, rf['requests']) * 1e4, '{:.2f}')} s per 10k."
        )
    end_rss = res.get("gateway_peak_rss_kib_end")
    if end_rss:
        lines.append(
            f"- Gateway peak RSS (VmHWM) at the end of the run, after the login, storm and refresh loads: "
            f"{end_rss / 1024:.0f} MiB (after the proxy rounds alone: "
            f"{fmt(next((t['peak_rss_kib'] / 1024 for t in res['targets'] if t['name'] == 'protected'), None), '{:.0f}')} MiB)."
        )
    rv = res.get("revocation") or {}
    if rv:
        lines.append(
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
        )
    for n in res["notes"]:
        lines.append(f"- Note: {n}")
    return "\n".join(lines) + "\n"


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_svg(res):
    import math

    pcts = ["p50_ms", "p90_ms", "p99_ms", "p99.9_ms"]
    names = ["p50", "p90", "p99", "p99.9"]
    series = [(t["label"], [t[p] for p in pcts]) for t in res["targets"]]
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

    colors = ["#4c78a8", "#f58518", "#e45756", "#72b7b2", "#54a24b", "#b279a2", "#9d755d"]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{L}" y="22" font-size="15" font-weight="bold">Latency percentiles per target (ms, log scale; lower is better)</text>',
        f'<text x="{L}" y="40" fill="#555">{esc(res["machine"]["cpu_model"])}, {res["machine"]["nproc"]} cores; commit {esc(res["git"]["commit"][:12])}; {esc(res["mode"])}; {esc(res["finished_at"][:10])}</text>',
    ]
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
        c = colors[k % len(colors)]
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


def write_outputs(res, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(res, f, indent=2)
        f.write("\n")
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(render_md(res))
    with open(os.path.join(out_dir, "latency.svg"), "w") as f:
        f.write(render_svg(res))


def update_readme(readme, out_dir):
    with open(readme) as f:
        text = f.read()
    with open(os.path.join(out_dir, "results.md")) as f:
        block = f.read()
    begin, end = "<!-- bench:begin (generated by benches/load/bench.py --update-readme) -->", "<!-- bench:end -->"
    pat = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pat.search(text):
        raise SystemExit(f"{readme}: no generated bench block (markers) found")
    text = pat.sub(lambda _: begin + "\n" + block + end, text)
    with open(readme, "w") as f:
        f.write(text)


# ----------------------------------------------------------------------------------------------
# main


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="short run, no thresholds, output to a temp dir")
    ap.add_argument("--binary", help="portcullis binary (default target/release/portcullis)")
    ap.add_argument("--argon2-bin", help="argon2_rate bench executable")
    ap.add_argument("--duration", type=int, help="seconds per measured run (full 8, smoke 2)")
    ap.add_argument("--rounds", type=int, help="alternating rounds (full 5, smoke 1)")
    ap.add_argument("--connections", type=int, default=64, help="connections per proxy target")
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument("--login-connections", type=int, default=4)
    ap.add_argument("--refresh-connections", type=int, default=16)
    ap.add_argument("--revocations", type=int, help="revocations to time (full 120, smoke 10)")
    ap.add_argument("--revocation-timeout", type=float, default=5.0)
    ap.add_argument("--argon2-seconds", type=float, help="seconds per raw argon2 round, half hashing, half verifying (full 6, smoke 1)")
    ap.add_argument("--loadgen", choices=["auto", "python"], default="auto")
    ap.add_argument("--upstream", choices=["auto", "python"], default="auto")
    ap.add_argument("--no-peers", action="store_true", help="skip nginx proxy_pass and HAProxy")
    ap.add_argument("--profile", action="store_true", help="after the run, perf-profile the gateway on the protected route")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs; smoke results)")
    ap.add_argument("--out", help="output directory (full: benches/results; smoke: a temp dir)")
    ap.add_argument("--quiet-wait", default="", help="what run.sh's quiet-machine wait found (recorded)")
    ap.add_argument("--hard-timeout", type=float, help="kill everything after this many seconds")
    ap.add_argument("--render", metavar="DIR", help="only re-render DIR/results.json")
    ap.add_argument("--update-readme", nargs=2, metavar=("README", "DIR"))
    a = ap.parse_args()
    smoke = a.smoke
    a.duration = a.duration or (2 if smoke else 8)
    a.rounds = a.rounds or (1 if smoke else 5)
    a.revocations = a.revocations or (10 if smoke else 120)
    a.argon2_seconds = a.argon2_seconds or (1.0 if smoke else 6.0)
    if smoke:
        a.refresh_connections = min(a.refresh_connections, 4)
    a.hard_timeout = a.hard_timeout or (100.0 if smoke else 1800.0)
    return a


def main():
    args = parse_args()
    if args.render:
        with open(os.path.join(args.render, "results.json")) as f:
            res = json.load(f)
        res["headline"] = headline(res)
        res["verdicts"] = verdicts(res["headline"], res["mode"] == "smoke")
        write_outputs(res, args.render)
        return 0
    if args.update_readme:
        update_readme(*args.update_readme)
        return 0

    mode = "smoke" if args.smoke else "full"
    binary = os.path.abspath(args.binary or os.path.join(ROOT, "target", "release", "portcullis"))
    if not os.path.exists(binary):
        log(f"gateway binary {binary} not found")
        return 1
    tmp = tempfile.mkdtemp(prefix="portcullis-bench-")
    out_dir = args.out or (os.path.join(tmp, "results") if args.smoke else os.path.join(ROOT, "benches", "results"))
    procs = Procs(tmp)
    notes = []

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    # One benchmark at a time on a machine: a full run waits for the lock; a smoke run (CI, must
    # stay short) only notes that another run is going on.
    lock = open(LOCK_PATH, "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        if args.smoke:
            notes.append("another load-harness run held the lock: numbers disturbed")
        else:
            log(f"another load-harness run holds {LOCK_PATH}: waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)

    def watchdog():
        log(f"hard timeout ({args.hard_timeout:.0f} s) reached: stopping")
        os.kill(os.getpid(), signal.SIGTERM)

    timer = threading.Timer(args.hard_timeout, watchdog)
    timer.daemon = True
    timer.start()

    # DROP DATABASE forces a checkpoint (tens of seconds on a busy machine): a full run uses its
    # own database and drops it at the end; smoke runs share one that is never dropped (every run
    # registers its own user).
    db_name = "portcullis_bench_smoke" if args.smoke else f"portcullis_bench_load_{os.getpid()}"
    db_url, admin_url = db_urls(db_name)
    rc = 1
    try:
        rc = run(args, mode, binary, tmp, out_dir, procs, notes, db_name, db_url, admin_url)
        return rc
    finally:
        timer.cancel()
        t0 = time.monotonic()
        procs.stop_all()
        if not args.smoke:
            drop_database(admin_url, db_name)
        log(f"cleanup took {time.monotonic() - t0:.1f} s")
        lock.close()
        if args.keep or (args.smoke and rc != 0):
            log(f"outputs and logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            if args.smoke:
                log("temp dir removed (--keep keeps it)")


def run(args, mode, binary, tmp, out_dir, procs, notes, db_name, db_url, admin_url):
    started = datetime.datetime.now(datetime.timezone.utc)
    ncpu = len(os.sched_getaffinity(0))
    if ncpu >= 2 and shutil.which("taskset"):
        cpus = sorted(os.sched_getaffinity(0))
        proxy_cpu, load_cpu = str(cpus[0]), str(cpus[1])
        pinning = {"proxy_cpu": proxy_cpu, "load_cpu": load_cpu}
    else:
        proxy_cpu = load_cpu = None
        pinning = None
        notes.append("no CPU pinning: fewer than 2 CPUs or taskset missing")
    loader = Loader(args, tmp, load_cpu)
    if loader.kind != "wrk":
        notes.append("wrk not used (not installed, or --loadgen python): the Python fallback load generator ran, and it, not the targets, is the bottleneck")

    # upstream
    up_port = free_port()
    upstream_kind = None
    if args.upstream == "auto" and shutil.which("nginx"):
        p = start_nginx_upstream(procs, tmp, load_cpu, up_port)
        if wait_http(up_port, "/", 10, p):
            upstream_kind = "nginx"
        else:
            notes.append(f"nginx upstream did not start ({tail(p.bench_log, 3)}); using the built-in upstream")
            procs.stop(p)
    if upstream_kind is None:
        p = procs.start("upstream", [sys.executable, os.path.join(HERE, "upstream.py"), str(up_port)], cpu=load_cpu)
        if not wait_http(up_port, "/", 10, p):
            log(f"built-in upstream did not start:\n{tail(p.bench_log)}")
            return 1
        upstream_kind = "python"
        notes.append("nginx upstream not used (not installed, or --upstream python): the built-in Python upstream ran, and it limits every target")
    log(f"upstream: {upstream_kind} on 127.0.0.1:{up_port}")

    # gateway A
    keys_dir = os.path.join(tmp, "keys")
    os.makedirs(keys_dir, exist_ok=True)
    gw = Gateway(procs, tmp, "gateway-a", binary, proxy_cpu, db_url, keys_dir, up_port)
    if not gw.wait_ready(90):
        log(f"gateway did not become ready:\n{tail(gw.proc.bench_log, 40)}")
        return 1
    log(f"gateway A pid {gw.pid} on 127.0.0.1:{gw.port} (admin {gw.admin_port})")

    email = f"bench-{int(time.time())}-{os.getpid()}@example.com"
    st, body = request(gw.port, "POST", "/auth/register", {"email": email, "password": PASSWORD})
    if st != 201:
        log(f"register answered {st}: {body[:300]!r}")
        return 1
    pair = login(gw.port, email)
    token = pair["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    checks = {
        "public": request(gw.port, "GET", PUBLIC_PATH)[0],
        "protected": request(gw.port, "GET", API_PATH, headers=auth)[0],
        "protected without token": request(gw.port, "GET", API_PATH)[0],
    }
    if checks != {"public": 200, "protected": 200, "protected without token": 401}:
        log(f"gateway sanity checks failed: {checks}")
        return 1
    st, jwks = request(gw.port, "GET", "/auth/jwks.json")
    pubkey = os.path.join(tmp, "es256-public.pem")
    with open(pubkey, "w") as f:
        f.write(es256_public_pem(json.loads(jwks)))

    hdr = [f"Authorization: Bearer {token}"]
    targets = [
        {"name": "direct", "label": "direct to upstream (limit)", "url": f"http://127.0.0.1:{up_port}{API_PATH}", "headers": hdr},
        {"name": "public", "label": "portcullis, public route", "url": f"http://127.0.0.1:{gw.port}{PUBLIC_PATH}", "headers": []},
        {"name": "protected", "label": "portcullis, protected route (ES256)", "url": f"http://127.0.0.1:{gw.port}{API_PATH}", "headers": hdr},
    ]
    procs_by_target = {"public": gw.pid, "protected": gw.pid}
    peers = []

    # peers
    if args.no_peers:
        notes.append("peers skipped (--no-peers)")
    else:
        if shutil.which("nginx"):
            port = free_port()
            p = start_nginx_proxy(procs, tmp, proxy_cpu, port, up_port)
            if wait_http(port, API_PATH, 10, p):
                targets.append({"name": "nginx", "label": "nginx proxy_pass (no auth)", "url": f"http://127.0.0.1:{port}{API_PATH}", "headers": hdr})
                procs_by_target["nginx"] = p.pid
                peers.append(p)
            else:
                notes.append(f"nginx proxy_pass peer did not start, skipped: {tail(p.bench_log, 3)}")
                procs.stop(p)
        else:
            notes.append("nginx not installed: nginx proxy_pass peer skipped")
        if shutil.which("haproxy"):
            port = free_port()
            p = start_haproxy(procs, tmp, proxy_cpu, port, up_port, pubkey, "portcullis", "portcullis")
            ok = wait_http(port, "/", 10, p, want=401)
            good = ok and request(port, "GET", API_PATH, headers=auth)[0] == 200
            bad_sig = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
            rejects = ok and request(port, "GET", API_PATH, headers={"Authorization": f"Bearer {bad_sig}"})[0] == 401
            if good and rejects:
                targets.append({"name": "haproxy", "label": "HAProxy jwt_verify ES256", "url": f"http://127.0.0.1:{port}{API_PATH}", "headers": hdr})
                procs_by_target["haproxy"] = p.pid
                peers.append(p)
            else:
                notes.append(f"HAProxy jwt_verify peer failed its checks, skipped: {tail(p.bench_log, 3)}")
                procs.stop(p)
        else:
            notes.append("haproxy not installed: HAProxy jwt_verify peer skipped")

    res = {
        "schema": 1,
        "mode": mode,
        "started_at": started.isoformat(timespec="seconds"),
        "git": git_info(),
        "machine": machine_info(),
        "binary": os.path.relpath(binary, ROOT) if binary.startswith(ROOT) else binary,
        "pinning": pinning,
        "tools": tool_versions(loader, upstream_kind),
        "quiet_wait": args.quiet_wait,
        "settings": {
            "duration_s": args.duration,
            "rounds": args.rounds,
            "connections": args.connections,
            "wrk_threads": args.wrk_threads,
            "login_connections": args.login_connections,
            "refresh_connections": args.refresh_connections,
            "revocations": args.revocations,
            "gateway": {"threads": 1, "algorithm": "ES256", "argon2": "m=19456 t=2 p=1 (defaults)", "rate_limits": 0, "RUST_LOG": "warn"},
        },
        "notes": notes,
    }

    res["targets"] = measure_targets(args, loader, targets, procs_by_target, notes)
    for p in peers:
        procs.stop(p)

    def phase(name, fn):
        """A secondary measurement: a failure is recorded as a note, the run goes on."""
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            log(f"{name} failed: {e!r}")
            notes.append(f"{name} not measured: {e!r}"[:500])
            return None

    res["login"] = phase("login throughput", lambda: measure_login(args, loader, gw, email, proxy_cpu, notes))
    res["login_storm"] = phase("login storm", lambda: measure_storm(args, loader, gw, token, email))
    res["refresh"] = phase("refresh throughput", lambda: measure_refresh(args, loader, gw, email, tmp))

    def revocation():
        gw_b = Gateway(procs, tmp, "gateway-b", binary, proxy_cpu, db_url, keys_dir, up_port)
        if not gw_b.wait_ready(60):
            raise RuntimeError(f"gateway B did not start: {tail(gw_b.proc.bench_log, 3)}")
        try:
            return measure_revocation(args, gw, gw_b, email)
        finally:
            procs.stop(gw_b.proc)

    res["revocation"] = phase("revocation propagation", revocation)
    res["gateway_peak_rss_kib_end"] = peak_rss_kib(gw.pid)
    if args.profile:
        res["profile"] = phase("profile", lambda: profile_gateway(args, loader, gw, token, tmp, out_dir))

    res["finished_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    res["headline"] = headline(res)
    res["verdicts"] = verdicts(res["headline"], args.smoke)
    write_outputs(res, out_dir)
    print()
    print(render_md(res))
    log(f"results written to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
