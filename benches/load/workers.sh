#!/usr/bin/env bash
# Pingora's runtime flavours side by side: the same release binary with
# `server.work_stealing = false` and `true`, `server.threads = 2` on every core (nothing
# pinned: the load generator shares the cores, as on a real two-core host), alternating rounds.
#
#   bash benches/load/workers.sh [--secs S] [--rounds N] [--threads T]   (needs wrk, nginx)
#
# Protected route (ES256 token, revocation cache hit), 64 connections, nginx as the upstream.
# Prints req/s and p99 per round and the medians. Run on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=10
rounds=3
threads=2
while [ $# -gt 0 ]; do
  case "$1" in
    --secs) secs="$2"; shift ;;
    --rounds) rounds="$2"; shift ;;
    --threads) threads="$2"; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
for tool in nginx wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done
bin=${PORTCULLIS_BIN:-target/release/portcullis}
[ -x "$bin" ] || cargo build --release

dir=$(mktemp -d /tmp/portcullis-workers-XXXX)
pids=()
db="portcullis_workers_$$"
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
source benches/load/common.sh
up=$(free_port)

conf=$(nginx_conf "$dir/nginx" "$(static_upstream "$up")")
nginx -p "$dir/nginx" -c "$conf" & pids+=($!)

start() { # work_stealing -> sets gw pid, port
  port=$(free_port); local admin; admin=$(free_port)
  cat >"$dir/config.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$admin"
threads = $threads
work_stealing = $1
upgrade_sock = "$dir/upgrade.sock"
[tokens]
algorithm = "ES256"
keys_dir = "$dir/keys"
$(gateway_sections "$db" "$up")
EOF
  RUST_LOG=warn "$bin" --config "$dir/config.toml" serve >"$dir/gateway.log" 2>&1 &
  gw=$!
  wait_ready "$admin" "$dir/gateway.log"
}

results="$dir/results.txt"
for round in $(seq 1 "$rounds"); do
  for steal in false true; do
    start "$steal"
    token=$(access_token "http://127.0.0.1:$port" workers@example.com)
    url="http://127.0.0.1:$port/api/x"
    wrk -t2 -c64 -d2s -H "Authorization: Bearer $token" "$url" >/dev/null # warm-up
    read -r rps p99 _ < <(wrk -t2 -c64 "-d${secs}s" --latency \
      -H "Authorization: Bearer $token" "$url" | wrk_summary)
    echo "$steal $round $rps $p99" | tee -a "$results"
    kill "$gw"; wait "$gw" 2>/dev/null || true
  done
done
python3 - "$results" "$threads" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
for steal in ("false", "true"):
    rps = [float(r[2]) for r in rows if r[0] == steal]
    p99 = [float(r[3]) for r in rows if r[0] == steal]
    print(f"work_stealing = {steal:5}  threads = {sys.argv[2]}: {statistics.median(rps):,.0f} req/s "
          f"(range {min(rps):,.0f}–{max(rps):,.0f}), p99 {statistics.median(p99):.2f} ms")
PY
