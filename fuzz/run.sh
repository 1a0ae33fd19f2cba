#!/usr/bin/env bash
# Fuzz every parser that sees attacker input with libFuzzer (cargo-fuzz, nightly toolchain).
#
#   bash fuzz/run.sh [SECONDS_PER_TARGET]    default 600; corpora grow in fuzz/corpus/<target>
#
# Targets: normalize (request paths), token (JWT header/claims/signature, structure-aware),
# config (config.toml text), auth_body (/auth JSON bodies), framing (request heads: body
# length, Host, Connection and the upstream header rewrite); `targets="a b"` picks some. Each
# asserts its invariants inside the target; a crash leaves a reproducer in
# fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
for target in ${targets:-normalize token config auth_body framing}; do
  mkdir -p "corpus/$target"
  cargo +nightly fuzz run -O "$target" "corpus/$target" -- \
    -max_total_time="$secs" -rss_limit_mb=4096 -timeout=5 2>&1 | tail -n 3
done
