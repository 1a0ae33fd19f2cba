#!/usr/bin/env bash
# HTTPS and HTTP/2 side by side: portcullis terminating TLS on a protected route against nginx
# terminating TLS with the same certificate (ECDSA P-256) and proxy_pass to the same upstream.
# Each proxy: one worker pinned to CPU 0; load generator and the nginx upstream on CPU 1.
#
#   bash benches/load/tls.sh [--secs S] [--rounds N]     (needs nginx, wrk, h2load, openssl)
#
# Measures, per round and target: HTTPS keep-alive req/s and p99 (wrk, 64 connections), full
# TLS handshakes/s (wrk with `Connection: close`: every request a new connection; session
# caches and tickets are off on both sides, so no resumption), and HTTP/2 req/s (h2load,
# 64 connections x 10 streams). Prints a Markdown table of the medians and the ratios, and
# writes it to benches/results/tls.md. Run on a quiet machine: nothing else building.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=10
rounds=3
while [ $# -gt 0 ]; do
  case "$1" in
    --secs) secs="$2"; shift ;;
    --rounds) rounds="$2"; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
for tool in nginx wrk h2load openssl curl python3 taskset; do
  command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done
bin=${PORTCULLIS_BIN:-target/release/portcullis}
[ -x "$bin" ] || cargo build --release

dir=$(mktemp -d /tmp/portcullis-tls-XXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS portcullis_tls_$$ WITH (FORCE)" >/dev/null 2>&1 || true
  [ -n "${KEEP:-}" ] || rm -rf "$dir"
}
trap cleanup EXIT
source benches/load/common.sh
up=$(free_port); plain=$(free_port); tls=$(free_port); admin=$(free_port); ngx=$(free_port)

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null

conf=$(nginx_conf "$dir/upstream" "$(static_upstream "$up")")
taskset -c 1 nginx -p "$dir/upstream" -c "$conf" & pids+=($!)
conf=$(nginx_conf "$dir/proxy" "  upstream up { server 127.0.0.1:$up; keepalive 128; keepalive_requests 10000000; }
  server {
    listen 127.0.0.1:$ngx ssl http2 backlog=4096;
    ssl_certificate $dir/cert.pem;
    ssl_certificate_key $dir/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache off;
    ssl_session_tickets off;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
  }")
taskset -c 0 nginx -p "$dir/proxy" -c "$conf" & pids+=($!)

cat >"$dir/config.toml" <<EOF
[server]
listen = "127.0.0.1:$plain"
admin_listen = "127.0.0.1:$admin"
threads = 1
upgrade_sock = "$dir/upgrade.sock"
[server.tls]
listen = "127.0.0.1:$tls"
certs = [ { cert = "$dir/cert.pem", key = "$dir/key.pem" } ]
[tokens]
algorithm = "ES256"
keys_dir = "$dir/keys"
[log]
access_log = false
$(gateway_sections "portcullis_tls_$$" "$up")
EOF
RUST_LOG=warn taskset -c 0 "$bin" --config "$dir/config.toml" serve >"$dir/gateway.log" 2>&1 & pids+=($!)
wait_ready "$admin" "$dir/gateway.log"
token=$(access_token "http://127.0.0.1:$plain" tls@example.com)
auth="Authorization: Bearer $token"

declare -A url=([portcullis]="https://127.0.0.1:$tls/api/x" [nginx]="https://127.0.0.1:$ngx/api/x")
for t in portcullis nginx; do
  code=$(curl -sk -o /dev/null -w '%{http_code}' -H "$auth" "${url[$t]}")
  [ "$code" = 200 ] || { echo "$t answered $code"; cat "$dir/gateway.log"; exit 1; }
  echo "$t: $(echo | openssl s_client -connect "$(echo "${url[$t]}" | cut -d/ -f3)" 2>/dev/null | grep -m1 'Cipher is' || true)"
done

wrk_run() { # url extra-header... -> "rps p99ms non-2xx"
  local u=$1; shift
  local args=()
  for h in "$@"; do args+=(-H "$h"); done
  taskset -c 1 wrk -t1 -c64 "-d${secs}s" --latency "${args[@]}" "$u" | wrk_summary
}
h2_run() { # url -> rps
  taskset -c 1 h2load -n $((secs * 4000)) -c 64 -m 10 -H "$auth" "$1" 2>/dev/null |
    python3 -c '
import re, sys
text = sys.stdin.read()
m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text)
ok = re.search(r"(\d+) succeeded", text)
print(m.group(1) if m else 0, ok.group(1) if ok else 0)'
}

results="$dir/results.txt"
for round in $(seq 1 "$rounds"); do
  for t in portcullis nginx; do
    read -r rps p99 bad < <(wrk_run "${url[$t]}" "$auth")
    read -r hs _ hbad < <(wrk_run "${url[$t]}" "$auth" "Connection: close")
    read -r h2 h2ok < <(h2_run "${url[$t]}")
    echo "$t $round $rps $p99 $hs $h2 $bad $hbad $h2ok" | tee -a "$results"
  done
done

python3 - "$results" "$secs" "$rounds" <<'PY' | tee benches/results/tls.md
import statistics, sys, datetime
rows = [l.split() for l in open(sys.argv[1])]
med = lambda t, i: statistics.median(float(r[i]) for r in rows if r[0] == t)
spread = lambda t, i: (min(float(r[i]) for r in rows if r[0] == t), max(float(r[i]) for r in rows if r[0] == t))
print(f"## HTTPS and HTTP/2 against nginx ({datetime.date.today()}, {sys.argv[3]} rounds of {sys.argv[2]} s, medians; range in brackets)\n")
print("| target | HTTPS keep-alive req/s | HTTPS p99 ms | full handshakes/s | HTTP/2 req/s |")
print("|---|---:|---:|---:|---:|")
for t, label in (("portcullis", "portcullis protected route (ES256)"), ("nginx", "nginx `proxy_pass` (no auth)")):
    cells = []
    for i, fmt in ((2, "{:,.0f}"), (3, "{:.2f}"), (4, "{:,.0f}"), (5, "{:,.0f}")):
        lo, hi = spread(t, i)
        cells.append(f"{fmt.format(med(t, i))} [{fmt.format(lo)}–{fmt.format(hi)}]")
    print(f"| {label} | " + " | ".join(cells) + " |")
r = lambda i: med("portcullis", i) / med("nginx", i)
print(f"\nportcullis/nginx: HTTPS keep-alive {r(2):.2f}× (target ≥ 0.5×), handshakes {r(4):.2f}× "
      f"(target ≥ 0.8×), HTTP/2 {r(5):.2f}×, p99 {r(3):.2f}×.")
bad = sum(int(r_[6]) + int(r_[7]) for r_ in rows)
print(f"Non-2xx answers during the runs: {bad}.")
PY
