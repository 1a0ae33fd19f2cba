#!/usr/bin/env bash
# CPU instructions per proxied request, counted by valgrind's callgrind: unlike req/s, the count
# does not move when something else runs on the machine, so a change to the request path can be
# judged on a busy 2-core box. One gateway worker thread, the release binary, wrk as the client,
# the built-in Python upstream; counting covers only the measured window (after warm-up).
#
#   bash benches/load/instructions.sh [--requests-secs S]   (needs wrk, valgrind, PostgreSQL)
#
# Prints instructions and allocator calls (malloc, calloc, realloc, aligned allocations) per
# request for a public route and a protected (JWT + revocation cache) route. The whole process is counted (Pingora, our phases, the allocator, the kernel boundary
# excluded): compare runs of this script, not with other tools.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=10
[ "${1:-}" = "--requests-secs" ] && secs="$2"

for tool in wrk valgrind callgrind_control curl python3; do
  command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done
bin=${PORTCULLIS_BIN:-target/release/portcullis}  # PORTCULLIS_BIN: compare two builds
[ -x "$bin" ] || cargo build --release

dir=$(mktemp -d /tmp/portcullis-instr-XXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; [ -n "${KEEP:-}" ] || rm -rf "$dir"; }
trap cleanup EXIT

source benches/load/common.sh
up=$(free_port); port=$(free_port); admin=$(free_port)
cat >"$dir/config.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$admin"
threads = 1
upgrade_sock = "$dir/upgrade.sock"
[tokens]
keys_dir = "$dir/keys"
$(gateway_sections "portcullis_instr_$$" "$up")
[[route]]
prefix = "/public/"
upstream = "api"
auth = "none"
EOF

python3 benches/load/upstream.py "$up" >/dev/null 2>&1 &
pids+=($!)
RUST_LOG=warn valgrind --tool=callgrind --instr-atstart=no \
  --callgrind-out-file="$dir/cg.out" "$bin" --config "$dir/config.toml" serve \
  >"$dir/gateway.log" 2>&1 &
vg=$!
pids+=($vg)
wait_ready "$admin" "$dir/gateway.log"
token=$(access_token "http://127.0.0.1:$port" instr@example.com)

measure() { # name path [header]
  local name=$1 path=$2 header=${3:-}
  local args=(-t1 -c4 "-d${secs}s" --latency)
  [ -n "$header" ] && args+=(-H "$header")
  wrk -t1 -c4 -d2s ${header:+-H "$header"} "http://127.0.0.1:$port$path" >/dev/null # warm-up
  callgrind_control -z "$vg" >/dev/null 2>&1
  callgrind_control -i on "$vg" >/dev/null 2>&1
  local out
  out=$(wrk "${args[@]}" "http://127.0.0.1:$port$path")
  callgrind_control -i off "$vg" >/dev/null 2>&1
  callgrind_control -d "$name" "$vg" >/dev/null 2>&1
  sleep 1
  local n ir file
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  file=$(ls -t "$dir"/cg.out* | head -1)
  ir=$(awk '/^totals:/ {print $2; exit}' "$file")
  allocs=$(python3 - "$file" <<'PY'
# Calls into the allocators recorded in a callgrind dump (mimalloc behind Rust's global
# allocator, glibc malloc for C code): each `cfn=` naming an entry point is followed by a
# `calls=N ...` line.
import re, sys
ENTRY_POINTS = {
    "mi_malloc", "mi_zalloc", "mi_calloc", "mi_realloc", "mi_malloc_aligned",
    "mi_zalloc_aligned", "mi_realloc_aligned", "malloc", "calloc", "realloc",
    "posix_memalign", "aligned_alloc",
}
names, total, target = {}, 0, None
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line)
    if m:
        if m.group(2):
            names[m.group(1)] = m.group(2).strip()
        target = names.get(m.group(1)) if line.startswith("cfn=") else None
        continue
    if target and line.startswith("calls="):
        if target.split("'")[0] in ENTRY_POINTS:
            total += int(line.split()[0][6:])
        target = None
print(total)
PY
)
  echo "$name: $((ir / n)) instructions/request, $(python3 -c "print(f'{$allocs / $n:.1f}')") allocations/request ($n requests)"
}

measure public /public/x
measure protected /api/x "Authorization: Bearer $token"
psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS portcullis_instr_$$ WITH (FORCE)" >/dev/null 2>&1 || true
