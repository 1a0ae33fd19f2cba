#!/usr/bin/env bash
# Fuzz every parser that sees attacker input with libFuzzer (cargo-fuzz).
#
#   bash fuzz/run.sh [SECONDS_PER_TARGET]   default 600, nightly toolchain, AddressSanitizer,
#                                           release; corpora grow in fuzz/corpus/<target>
#   bash fuzz/run.sh --smoke                CI: 30 s per target on the default (stable)
#                                           toolchain, no sanitizer, debug build (overflow
#                                           checks on, a quarter of the build time); new
#                                           inputs go to a temporary directory, the committed
#                                           corpora are only read
#
# Targets: normalize (request paths), token (JWT header/claims/signature, structure-aware),
# config (config.toml text), auth_body (/auth JSON bodies), framing (request heads: body
# length, Host, Connection and the upstream header rewrite); `targets="a b"` picks some. Each
# asserts its invariants inside the target; a crash leaves a reproducer in
# fuzz/artifacts/<target>/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")"
smoke=0
[ "${1:-}" != "--smoke" ] || smoke=1
if [ "$smoke" = 1 ]; then
  secs=30
  build=(-s none --dev)
  toolchain=()
else
  secs=${1:-600}
  build=(-O)
  toolchain=(+nightly)
  rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cargo "${toolchain[@]}" fuzz build "${build[@]}"
for target in ${targets:-normalize token config auth_body framing}; do
  mkdir -p "corpus/$target"
  corpora=("corpus/$target")
  if [ "$smoke" = 1 ]; then
    fresh=$(mktemp -d)
    corpora=("$fresh" "corpus/$target")
  fi
  echo "== fuzz $target (${secs}s)"
  cargo "${toolchain[@]}" fuzz run "${build[@]}" "$target" "${corpora[@]}" -- \
    -max_total_time="$secs" -rss_limit_mb=4096 -timeout=5 2>&1 | tail -n 3
  [ "$smoke" = 0 ] || rm -rf "$fresh"
done
