#!/usr/bin/env bash
# Starts the three release binaries on a fresh SQLite folder and checks them
# with grpcurl the way a person would: each lists its service, reports
# SERVING, and an account round-trips, with grpcurl and with the generated
# Python client (make clients). Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

grpcurl=${GRPCURL:-$(command -v grpcurl || echo .venv/bin/grpcurl)}
data=$(mktemp -d)
log="$data/suite.log"
export CASCADE_DATA_DIR="$data"
export LIFECYCLE_PORT=${LIFECYCLE_PORT:-51051} SCORING_PORT=${SCORING_PORT:-51052} OPPORTUNITY_PORT=${OPPORTUNITY_PORT:-51053}

# The binaries answer --version and --help instead of starting a server.
bin=${CASCADE_BIN_DIR:-target/release}
for service in lifecycle scoring opportunity; do
  version=$("$bin/cascade-$service" --version) || { echo "SMOKE FAILED: cascade-$service --version" >&2; exit 1; }
  [[ "$version" == "cascade-$service "* ]] || { echo "SMOKE FAILED: cascade-$service --version said: $version" >&2; exit 1; }
  help=$("$bin/cascade-$service" --help) || { echo "SMOKE FAILED: cascade-$service --help" >&2; exit 1; }
  grep -q -- '--migrate' <<<"$help" || { echo "SMOKE FAILED: cascade-$service --help said: $help" >&2; exit 1; }
done
echo "ok   the binaries answer --version and --help"

scripts/run-suite.sh >"$log" 2>&1 &
suite=$!
cleanup() {
  kill -TERM "$suite" 2>/dev/null || true
  wait "$suite" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT

fail() {
  echo "SMOKE FAILED: $*" >&2
  echo "--- suite log ---" >&2
  cat "$log" >&2
  exit 1
}

check_service() {
  local port=$1 service=$2 list health
  for _ in $(seq 1 100); do
    health=$("$grpcurl" -plaintext "localhost:$port" grpc.health.v1.Health/Check 2>/dev/null || true)
    [[ "$health" == *'"SERVING"'* ]] && break
    sleep 0.1
  done
  # Output is captured first: `grpcurl | grep -q` can fail under pipefail
  # when grep exits before grpcurl has written everything.
  list=$("$grpcurl" -plaintext "localhost:$port" list) || fail "grpcurl list on $port"
  grep -qx "$service" <<<"$list" || fail "$service not listed on $port: $list"
  grep -qx "grpc.health.v1.Health" <<<"$list" || fail "health not listed on $port"
  grep -qx "grpc.reflection.v1.ServerReflection" <<<"$list" || fail "reflection not listed on $port"
  health=$("$grpcurl" -plaintext "localhost:$port" grpc.health.v1.Health/Check) || fail "health check on $port"
  [[ "$health" == *'"SERVING"'* ]] || fail "$port overall health not SERVING: $health"
  health=$("$grpcurl" -plaintext -d "{\"service\":\"$service\"}" "localhost:$port" grpc.health.v1.Health/Check) \
    || fail "health check of $service"
  [[ "$health" == *'"SERVING"'* ]] || fail "$service health not SERVING: $health"
  health=$("$grpcurl" -plaintext -d '{"service":"liveness"}' "localhost:$port" grpc.health.v1.Health/Check) \
    || fail "liveness check on $port"
  [[ "$health" == *'"SERVING"'* ]] || fail "$port liveness not SERVING: $health"
  dead=$("$grpcurl" -plaintext -H 'x-tenant-id: smoke' -d '{}' "localhost:$port" \
    cascade.admin.v1.OutboxAdminService/ListDeadLetters) || fail "ListDeadLetters on $port"
  # An empty answer (grpcurl prints an empty object): no deadLetters field.
  [[ "$dead" != *deadLetters* ]] || fail "dead letters on a fresh $port: $dead"
  echo "ok   $service on :$port lists its service, is SERVING and alive, and has no dead letters"
}

check_service "$LIFECYCLE_PORT" cascade.lifecycle.v1.LifecycleService
check_service "$SCORING_PORT" cascade.scoring.v1.ScoringService
check_service "$OPPORTUNITY_PORT" cascade.opportunity.v1.OpportunityService

created=$("$grpcurl" -plaintext -H 'x-tenant-id: smoke' \
  -d '{"account":{"name":"Smoke Test Inc","domain":"smoke.example"},"request_id":"smoke-1"}' \
  "localhost:$LIFECYCLE_PORT" cascade.lifecycle.v1.LifecycleService/CreateAccount) || fail "CreateAccount"
id=$(printf '%s' "$created" | sed -n 's/.*"accountId": "\([^"]*\)".*/\1/p')
[ -n "$id" ] || fail "no accountId in $created"
fetched=$("$grpcurl" -plaintext -H 'x-tenant-id: smoke' -d "{\"account_id\":\"$id\"}" \
  "localhost:$LIFECYCLE_PORT" cascade.lifecycle.v1.LifecycleService/GetAccount) || fail "GetAccount"
[[ "$fetched" == *'"name": "Smoke Test Inc"'* ]] || fail "GetAccount returned $fetched"
[[ "$fetched" == *'"stage": "ACCOUNT_STAGE_TARGETED"'* ]] || fail "new account not TARGETED"
echo "ok   account $id round-trips"

# The same round trip through the generated Python client (make clients, which
# make smoke runs first), to show the contracts serve a client in another language.
python=${PYTHON:-.venv/bin/python}
[ -d build/clients/python/cascade ] || fail "no Python client in build/clients/python: run make clients"
"$python" scripts/python-client-smoke.py "localhost:$LIFECYCLE_PORT" >"$data/python.out" 2>&1 \
  || fail "the Python client: $(cat "$data/python.out")"
cat "$data/python.out"

# The README's gRPC-Web call by hand, as a browser sends it: plain HTTP/1.1, one frame (flag 0,
# 4-byte length, a CreateAccountRequest named "Initech"); the answer's frames hold the account
# and a trailer frame with grpc-status:0. NULs are dropped so bash can hold the answer.
web=$(printf '\x00\x00\x00\x00\x0b\x0a\x09\x12\x07Initech' | curl -s --http1.1 \
  "http://localhost:$LIFECYCLE_PORT/cascade.lifecycle.v1.LifecycleService/CreateAccount" \
  -H 'content-type: application/grpc-web+proto' -H 'x-grpc-web: 1' -H 'x-tenant-id: smoke' \
  --data-binary @- | tr -d '\000') || fail "the gRPC-Web call"
[[ "$web" == *Initech* && "$web" == *grpc-status:0* ]] || fail "the gRPC-Web call answered: $web"
echo "ok   a gRPC-Web call over HTTP/1.1 creates an account (grpc-status:0)"

if "$grpcurl" -plaintext -d '{"account":{"name":""}}' "localhost:$LIFECYCLE_PORT" \
  cascade.lifecycle.v1.LifecycleService/CreateAccount >"$data/err.txt" 2>&1; then
  fail "an empty name was accepted"
fi
grep -q 'InvalidArgument' "$data/err.txt" && grep -q '"field":"account.name"' "$data/err.txt" \
  || fail "empty name did not give a readable field violation: $(cat "$data/err.txt")"
echo "ok   an empty name answers INVALID_ARGUMENT naming account.name"
# The README's grpcurl examples, run as written (ports mapped to the smoke ports).
export PATH="$(cd "$(dirname "$grpcurl")" && pwd):$PATH"
examples=0
while IFS= read -r line; do
  [[ -z "$line" || "$line" == \#* || "$line" == '```'* ]] && continue
  line=${line//localhost:50051/localhost:$LIFECYCLE_PORT}
  line=${line//localhost:50052/localhost:$SCORING_PORT}
  line=${line//localhost:50053/localhost:$OPPORTUNITY_PORT}
  examples=$((examples + 1))
  if [[ "$line" == *"  # fails: "* ]]; then
    expected=${line##*  # fails: }
    command=${line%%  # fails: *}
    status=0
    output=$(eval "$command" 2>&1) || status=$?
    [ "$status" -ne 0 ] || fail "README example should fail with $expected but succeeded: $command"
    grep -q "$expected" <<<"$output" || fail "README example did not fail with $expected: $output"
    # grpcurl exits with 64 + the gRPC code, as the README says.
    case "$expected" in
      InvalidArgument) code=3 ;; NotFound) code=5 ;; FailedPrecondition) code=9 ;; *) code= ;;
    esac
    [ -z "$code" ] || [ "$status" -eq $((64 + code)) ] || fail "README example exited $status, not $((64 + code)): $command"
  else
    eval "$line" >"$data/example.out" 2>&1 || fail "README example failed: $line
$(cat "$data/example.out")"
  fi
done < <(sed -n '/<!-- readme-examples:start -->/,/<!-- readme-examples:end -->/p' README.md | sed '1d;$d')
[ "$examples" -ge 10 ] || fail "found only $examples README examples"
echo "ok   $examples README grpcurl examples work as written"
# The demo plays the whole story against the same suite.
demo=${CASCADE_DEMO_BIN:-target/release/cascade-demo}
if [ -x "$demo" ]; then
  CASCADE_DEMO_LIFECYCLE="http://127.0.0.1:$LIFECYCLE_PORT" \
  CASCADE_DEMO_SCORING="http://127.0.0.1:$SCORING_PORT" \
  CASCADE_DEMO_OPPORTUNITY="http://127.0.0.1:$OPPORTUNITY_PORT" \
    "$demo" >"$data/demo.out" 2>&1 || fail "the demo failed: $(cat "$data/demo.out")"
  grep -q "stage EXPAND → ADVOCATE" "$data/demo.out" || fail "the demo did not reach ADVOCATE: $(cat "$data/demo.out")"
  grep -q "missing estimated_deal_size" "$data/demo.out" || fail "the demo did not show the refused advance"
  echo "ok   the demo plays the whole story (TARGETED to ADVOCATE)"
fi
echo "smoke test: all checks passed"
