#!/usr/bin/env bash
# Starts the three services on SQLite under ./data (or $CASCADE_DATA_DIR) and
# stops them all on Ctrl-C. Ports: LIFECYCLE_PORT, SCORING_PORT, OPPORTUNITY_PORT.
set -euo pipefail
cd "$(dirname "$0")/.."
# glibc gives each thread that contends for malloc an arena of its own and
# keeps freed memory in them; two arenas took scoring's peak RSS under ingest
# from 74 to 64 MiB and lifecycle's from 66 to 42 MiB on SQLite at the same
# ingest rate (docs/performance.md, round 4). The image sets it too.
export MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-2}

bin=${CASCADE_BIN_DIR:-target/release}
data=${CASCADE_DATA_DIR:-data}
mkdir -p "$data"

declare -A ports=(
  [lifecycle]=${LIFECYCLE_PORT:-50051}
  [scoring]=${SCORING_PORT:-50052}
  [opportunity]=${OPPORTUNITY_PORT:-50053}
)

pids=()
stop() {
  trap - INT TERM EXIT
  echo "stopping the suite..." >&2
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM EXIT

for service in lifecycle scoring opportunity; do
  upper=${service^^}
  env "CASCADE_${upper}__SERVER__PORT=${ports[$service]}" \
      "CASCADE_${upper}__DATABASE__URL=${CASCADE_DATABASE_URL_PREFIX:-sqlite://$data/}${service}.db" \
      "CASCADE_SCORING__LIFECYCLE__URL=http://127.0.0.1:${ports[lifecycle]}" \
      "CASCADE_OPPORTUNITY__LIFECYCLE__URL=http://127.0.0.1:${ports[lifecycle]}" \
      "$bin/cascade-$service" &
  pids+=($!)
done

echo "lifecycle :${ports[lifecycle]}  scoring :${ports[scoring]}  opportunity :${ports[opportunity]}  (Ctrl-C stops all)" >&2
# If any service exits on its own, stop the others too.
wait -n "${pids[@]}"
