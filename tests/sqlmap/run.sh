#!/usr/bin/env bash
# sqlmap against every /auth input (JSON body fields, query parameters, path ids, and at level 3
# the User-Agent and Referer headers) of the real binary on a throw-away database. The OIDC
# endpoints need a provider and are left to tests/it/oidc.rs (their parameters reach the
# database only as hashes).
#
#   bash tests/sqlmap/run.sh [--level 3] [--risk 2] [--binary PATH]
#
# Needs PostgreSQL and sqlmap (Debian package `sqlmap`); the binary defaults to
# target/debug/portcullis. Exits non-zero when sqlmap reports an injection for any target or the
# gateway logs a panic or an error. Not part of CI (level 3 takes tens of minutes); the README's
# "How it is tested" has the last result.
set -euo pipefail
cd "$(dirname "$0")/../.."

level=3
risk=2
binary=target/debug/portcullis
while [ $# -gt 0 ]; do
  case "$1" in
    --level) level="$2"; shift ;;
    --risk) risk="$2"; shift ;;
    --binary) binary="$2"; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
command -v sqlmap >/dev/null || { echo "sqlmap is not installed (apt-get install sqlmap)" >&2; exit 2; }

export GW_ACCESS_LOG=true
source tests/tools/gateway.sh
start_gateway "$binary" 18580 18590 sqlmap

json='Content-Type: application/json'
bearer="Authorization: Bearer $token"
# A user whose id, sessions and refresh token give the path and body targets real values:
# one session whose refresh token sqlmap rotates (and replays, which revokes that family),
# one whose id it deletes, one whose access token it uses.
curl -sf -X POST "$base/auth/register" -H "$json" \
  -d '{"email":"victim@example.com","password":"password-123"}' >/dev/null
login() {
  curl -sf -X POST "$base/auth/login" -H "$json" \
    -d '{"email":"victim@example.com","password":"password-123"}'
}
field() { python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d[sys.argv[2]] if sys.argv[2] in d else d["user"]["id"])' "$1" "$2"; }
rotated=$(login)
deleted=$(login)
used=$(login)
uid=$(field "$used" id)
refresh=$(field "$rotated" refresh_token)
user_token=$(field "$used" access_token)
sid=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("session_id",""))' "$deleted")
if [ -z "$sid" ]; then
  # The session id is the token's `sid` claim.
  sid=$(python3 -c 'import base64,json,sys; p=sys.argv[1].split(".")[1]; print(json.loads(base64.urlsafe_b64decode(p+"=="))["sid"])' "$(field "$deleted" access_token)")
fi

# method url data extra-header: `*` marks a path injection point.
targets=(
  "POST|$base/auth/register|{\"email\":\"new@example.com\",\"password\":\"password-123\"}|"
  "POST|$base/auth/login|{\"email\":\"victim@example.com\",\"password\":\"password-123\"}|"
  "POST|$base/auth/refresh|{\"refresh_token\":\"$refresh\"}|"
  "POST|$base/auth/logout|{\"refresh_token\":\"not-a-token\"}|"
  "POST|$base/auth/oidc/exchange|{\"login_code\":\"code\"}|"
  "POST|$base/auth/password|{\"current_password\":\"wrong-password\",\"new_password\":\"password-456\"}|Authorization: Bearer $user_token"
  "GET|$base/auth/admin/users?limit=10&cursor=x||$bearer"
  "GET|$base/auth/admin/audit?user=victim@example.com&event=login_ok&since=2026-01-01T00:00:00Z&limit=10&cursor=x||$bearer"
  "PATCH|$base/auth/admin/users/${uid}*|{\"role\":\"user\",\"is_active\":true}|$bearer"
  "DELETE|$base/auth/sessions/${sid}*||Authorization: Bearer $user_token"
  "DELETE|$base/auth/admin/users/${uid}*/sessions||$bearer"
)

status=0
summary=()
for t in "${targets[@]}"; do
  IFS='|' read -r method url data header <<<"$t"
  args=(-u "$url" --method "$method" --batch --level "$level" --risk "$risk" --dbms PostgreSQL
        --ignore-code 400,401,403,404,409 --flush-session --disable-coloring --output-dir "$work/sqlmap" -v 0)
  [ -n "$data" ] && args+=(--data "$data" -H "$json")
  [ -n "$header" ] && args+=(-H "$header")
  echo "== sqlmap $method ${url#"$base"}"
  out=$(sqlmap "${args[@]}" 2>&1 || true)
  if grep -qE "is vulnerable|sqlmap identified the following injection|Parameter: .* \((GET|POST|URI|PATCH|DELETE)\)" <<<"$out"; then
    echo "$out" | tail -40
    summary+=("INJECTABLE  $method ${url#"$base"}")
    status=1
  elif grep -q "all tested parameters do not appear to be injectable" <<<"$out"; then
    summary+=("clean       $method ${url#"$base"}")
  else
    echo "$out" | tail -20
    summary+=("UNFINISHED  $method ${url#"$base"}")
    status=1
  fi
done
check_gateway_log || status=1
echo
echo "sqlmap level $level risk $risk: ${#targets[@]} targets"
printf '  %s\n' "${summary[@]}"
echo "requests answered by the gateway: $(grep -c '"target":"access"' "$gw_log" || true)"
exit $status
