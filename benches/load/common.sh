# Shared by the shell benchmarks (instructions.sh, tls.sh, workers.sh): ports, a static nginx,
# waiting for a gateway, a token, and wrk's summary. Source it after `cd` to the repo root.

# A free loopback port.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# nginx_conf DIR HTTP-BLOCK: writes DIR/nginx.conf (one worker, no access log, its own temp
# paths, long keep-alive) around HTTP-BLOCK and prints its path.
nginx_conf() {
  local prefix=$1
  mkdir -p "$prefix/logs"
  cat >"$prefix/nginx.conf" <<CONF
$( [ "$(id -u)" = 0 ] && echo "user root;" )
worker_processes 1;
daemon off;
pid $prefix/nginx.pid;
error_log $prefix/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $prefix/body;
  proxy_temp_path $prefix/proxy;
  fastcgi_temp_path $prefix/fastcgi;
  uwsgi_temp_path $prefix/uwsgi;
  scgi_temp_path $prefix/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
$2
}
CONF
  echo "$prefix/nginx.conf"
}

# The http block of a static upstream on PORT answering `{"ok":true}`.
static_upstream() {
  echo "  server { listen 127.0.0.1:$1 backlog=4096;
    location / { default_type application/json; return 200 '{\"ok\":true}\n'; } }"
}

# gateway_sections DATABASE UPSTREAM_PORT: the config sections every shell benchmark shares —
# its own database, cheap argon2 and no login rate limits (logins are setup here, not what is
# measured), and the protected route /api/ to the upstream on UPSTREAM_PORT. [server] and
# [tokens] are each script's own.
gateway_sections() {
  cat <<EOF
[database]
url = "postgres://postgres@127.0.0.1:5432/$1"
pool_size = 4
[passwords]
argon2_memory_kib = 256
argon2_iterations = 1
[rate_limit]
login_per_minute_per_ip = 0
register_per_minute_per_ip = 0
[[upstream]]
name = "api"
addrs = ["127.0.0.1:$2"]
[[route]]
prefix = "/api/"
upstream = "api"
EOF
}

# wait_ready ADMIN_PORT LOG: waits up to 60 s for /readyz; prints LOG and fails otherwise.
wait_ready() {
  for _ in $(seq 1 300); do
    curl -fs "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  cat "$2"
  return 1
}

# access_token BASE_URL EMAIL: registers (if new) and logs in; prints the access token.
access_token() {
  local body="{\"email\":\"$2\",\"password\":\"password-123\"}"
  curl -fs -H 'Content-Type: application/json' -d "$body" "$1/auth/register" >/dev/null || true
  curl -fs -H 'Content-Type: application/json' -d "$body" "$1/auth/login" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}

# wrk's output on stdin -> "req/s p99-ms non-2xx".
wrk_summary() {
  python3 -c '
import re, sys
text = sys.stdin.read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
m = re.search(r"99%\s+([\d.]+)(us|ms|s)", text)
p99 = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(rps, p99, errors.group(1) if errors else 0)'
}
