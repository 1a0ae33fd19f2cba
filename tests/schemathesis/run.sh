#!/usr/bin/env bash
# Schemathesis against the real binary: the OpenAPI document the gateway serves
# (/auth/openapi.json) drives property-based requests to every /auth operation, anonymous
# and as an admin, and every answer must be no server error and match the document
# (status, content type, headers, body schema).
#
#   bash tests/schemathesis/run.sh [--examples N] [--binary PATH]
#
# Needs PostgreSQL and schemathesis (`pip install schemathesis`); the binary defaults to
# target/debug/portcullis (built by `cargo test`). A throw-away database, ports 18480/18490
# (tests/tools/gateway.sh).
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

source tests/tools/gateway.sh
start_gateway "$binary" 18480 18490 schemathesis

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
check_gateway_log || status=1
exit $status
