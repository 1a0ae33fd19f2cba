#!/usr/bin/env bash
# portcullis soak: the real release binary under moderate mixed traffic for a while, sampled
# every 10 s (RSS, fds, revocation cache, DB pool, responses by status class).
#
#   bash benches/soak/run.sh                 10 minutes, ~400 req/s, results in benches/results/
#   bash benches/soak/run.sh --minutes 1     a short run (e.g. to try a change)
#
# PORTCULLIS_BIN picks the binary (default target/release/portcullis; this script never builds:
# `cargo build --release` first). DATABASE_URL picks the PostgreSQL server (default
# postgres://postgres@127.0.0.1:5432/postgres); the soak creates and drops its own database.
# Other options go to soak.py (python3 benches/soak/soak.py --help): --scale, --out, --keep, ...
# Exit status: 0 when every answer was right, 1 on any 5xx, wrong answer or transport error.
set -euo pipefail
cd "$(dirname "$0")/../.."

bin=${PORTCULLIS_BIN:-target/release/portcullis}
if [ ! -x "$bin" ]; then
  echo "soak: $bin not found: build it (cargo build --release) or set PORTCULLIS_BIN" >&2
  exit 1
fi
command -v python3 >/dev/null || { echo "soak: python3 is needed" >&2; exit 1; }
exec python3 benches/soak/soak.py --binary "$bin" "$@"
