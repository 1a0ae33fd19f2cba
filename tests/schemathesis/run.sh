#!/usr/bin/env bash
# Schemathesis against the real binary: the OpenAPI document the gateway serves
# (/auth/openapi.json) drives property-based requests to every /auth operation, anonymous
# and as an admin, and every answer must be no server error and match the document
# (status, content type, headers, body schema).
#
#   bash tests/schemathesis/run.sh [--examples N] [--binary PATH]
#
# Needs PostgreSQL at DATABASE_URL's server (default 127.0.0.1:5432, user postgres) and
# schemathesis (`pip install schemathesis`); the binary defaults to target/debug/portcullis
# (built by `cargo test`). Uses a throw-away database and ports 18480/18490.
set -euo pipefail
cd "$(dirname "$0")/../.."

examples=25
binary=target/debug/portcullis
while [ $# -gt 0 ]; do
  case "$1" in
    --examples) examples="$2"; shift ;;
    --binary) binary="$2"; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
python3 -c 'import schemathesis' 2>/dev/null ||
  { echo "schemathesis is not installed (python3 -m pip install schemathesis)" >&2; exit 2; }
[ -x "$binary" ] || { echo "$binary is missing: run cargo build first" >&2; exit 2; }

server=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
server=${server%/*}
db="portcullis_schemathesis_$$"
work=$(mktemp -d)
port=18480
base="http://127.0.0.1:$port"
gw_pid=""
cleanup() {
  [ -n "$gw_pid" ] && kill "$gw_pid" 2>/dev/null && wait "$gw_pid" 2>/dev/null
  psql -q "$server/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# Limits off so the fuzzer reaches the handlers instead of 429; cheap argon2 so hundreds of
# logins take seconds (the parameters are the config's, the code path is the real one).
cat >"$work/config.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:18490"
threads = 2
upgrade_sock = "$work/upgrade.sock"
[database]
url = "$server/$db"
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
access_log = false
[[upstream]]
name = "none"
addrs = ["127.0.0.1:9"]
[[route]]
prefix = "/"
upstream = "none"
EOF

"$binary" --config "$work/config.toml" serve >"$work/gateway.log" 2>&1 &
gw_pid=$!
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:18490/readyz" >/dev/null 2>&1 && break
  kill -0 "$gw_pid" 2>/dev/null || { cat "$work/gateway.log"; exit 1; }
  sleep 0.1
done

printf 'admin-password\n' | "$binary" --config "$work/config.toml" \
  user create --email fuzz-admin@example.com --role admin --password-stdin >/dev/null
token=$(curl -sf -X POST "$base/auth/login" -H 'Content-Type: application/json' \
  -d '{"email":"fuzz-admin@example.com","password":"admin-password"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')

checks=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance
status=0
# Anonymous first (every operation, bearer ones answer their documented 401), then as the
# admin. logout-all would end the admin's own session midway, so the admin run leaves it out
# (the anonymous run covers it).
for who in anonymous admin; do
  args=()
  if [ "$who" = admin ]; then
    args=(-H "Authorization: Bearer $token" --exclude-path /auth/logout-all)
  fi
  echo "== schemathesis as $who, $examples examples per operation"
  python3 -m schemathesis.cli run "$base/auth/openapi.json" --url "$base" \
    --checks "$checks" --max-examples "$examples" --seed 1 \
    --request-timeout 10 --suppress-health-check all --warnings off "${args[@]}" || status=1
done
if grep -q "panicked" "$work/gateway.log"; then
  echo "the gateway panicked:"; grep -A5 "panicked" "$work/gateway.log"; status=1
fi
exit $status
