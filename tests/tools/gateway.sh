# Sourced by the black-box tool runs (tests/schemathesis, tests/sqlmap): starts the real binary
# on a throw-away database with an admin account, and removes both on exit.
#
#   source tests/tools/gateway.sh
#   start_gateway BINARY PORT ADMIN_PORT NAME
#
# GW_ACCESS_LOG=true keeps the access log (JSON lines in \$gw_log, to count requests).
# Sets: base (http://127.0.0.1:PORT), token (an admin's access token), work (temp dir),
# gw_log. Limits are off so tools reach the handlers instead of 429, and argon2 is cheap so
# hundreds of logins take seconds (the parameters are the config's; the code path is the real
# one). Needs PostgreSQL at DATABASE_URL's server (default 127.0.0.1:5432, user postgres).

gw_pid=""
gw_db=""
gw_server=""
work=$(mktemp -d)
gw_log="$work/gateway.log"

stop_gateway() {
  if [ -n "$gw_pid" ]; then kill "$gw_pid" 2>/dev/null && wait "$gw_pid" 2>/dev/null; fi
  gw_pid=""
  if [ -n "$gw_db" ]; then
    psql -q "$gw_server/postgres" -c "DROP DATABASE IF EXISTS $gw_db WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap stop_gateway EXIT

start_gateway() { # binary port admin_port name
  local binary=$1 port=$2 admin=$3 name=$4
  [ -x "$binary" ] || { echo "$binary is missing: run cargo build first" >&2; exit 2; }
  gw_server=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
  gw_server=${gw_server%/*}
  gw_db="portcullis_${name}_$$"
  base="http://127.0.0.1:$port"
  cat >"$work/config.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$admin"
threads = 2
upgrade_sock = "$work/upgrade.sock"
[database]
url = "$gw_server/$gw_db"
[tokens]
keys_dir = "$work/keys"
[passwords]
argon2_memory_kib = 64
argon2_iterations = 1
[rate_limit]
login_per_minute_per_ip = 0
login_per_minute_per_account = 0
register_per_minute_per_ip = 0
[log]
format = "json"
access_log = ${GW_ACCESS_LOG:-false}
[[upstream]]
name = "none"
addrs = ["127.0.0.1:9"]
[[route]]
prefix = "/"
upstream = "none"
EOF
  "$binary" --config "$work/config.toml" serve >"$gw_log" 2>&1 &
  gw_pid=$!
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break
    kill -0 "$gw_pid" 2>/dev/null || { cat "$gw_log"; exit 1; }
    sleep 0.1
  done
  printf 'admin-password\n' | "$binary" --config "$work/config.toml" \
    user create --email tool-admin@example.com --role admin --password-stdin >/dev/null
  token=$(curl -sf -X POST "$base/auth/login" -H 'Content-Type: application/json' \
    -d '{"email":"tool-admin@example.com","password":"admin-password"}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
}

# Fails the run when the gateway panicked or logged an error-level line.
check_gateway_log() {
  if grep -qE "panicked|\"level\":\"ERROR\"| ERROR " "$gw_log"; then
    echo "the gateway logged a panic or an error:"
    grep -E -A3 "panicked|\"level\":\"ERROR\"| ERROR " "$gw_log" | head -20
    return 1
  fi
}
