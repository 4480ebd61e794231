#!/usr/bin/env bash
# `make pg-profile`: where PostgreSQL spends an ingest run. Starts the three
# release binaries on fresh databases of the server at PG_PROFILE_URL, runs
# one cascade-load scenario (PROFILE_SCENARIO, default record-activities, x8
# batches of 500, PROFILE_SECONDS), and writes build/pg-profile/summary.txt:
#   - pg_stat_statements per service database: calls, total and mean time,
#     rows and shared buffers per call, statements per transaction;
#   - pg_stat_activity sampled every 20 ms: what the services' backends were
#     doing (active, idle in transaction = waiting for the service's next
#     statement, lock waits, WAL waits);
#   - CPU seconds of each service process and of all PostgreSQL backends.
# Needs pg_stat_statements in shared_preload_libraries (the script says how
# when it is missing). PROFILE_WARMUP_SECONDS runs by-ids ingest first, not
# counted. docs/performance.md has the findings.
set -euo pipefail
cd "$(dirname "$0")/.."

url=${PG_PROFILE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
scenario=${PROFILE_SCENARIO:-record-activities}
seconds=${PROFILE_SECONDS:-15}
out=build/pg-profile
bin=${CARGO_TARGET_DIR:-target}/release
load="$bin/cascade-load"
base=50171
mkdir -p "$out"

if ! psql -qtA "$url" -c "SHOW shared_preload_libraries" | grep -q pg_stat_statements; then
  echo "pg-profile: pg_stat_statements is not loaded; as a superuser run" >&2
  echo "  ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements';" >&2
  echo "then restart PostgreSQL." >&2
  exit 1
fi
psql -q "$url" -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null

tag=$(date +%s)
server=${url%%\?*}
server=${server%/*}
declare -A ports=([lifecycle]=$base [scoring]=$((base + 1)) [opportunity]=$((base + 2)))
declare -A pids=()
services=(lifecycle scoring opportunity)
for s in "${services[@]}"; do
  psql -q "$url" -c "CREATE DATABASE pgprof_${tag}_$s" >/dev/null
done

cleanup() {
  for s in "${services[@]}"; do
    [[ -n ${pids[$s]:-} ]] && kill -TERM "${pids[$s]}" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  for s in "${services[@]}"; do
    psql -q "$url" -c "DROP DATABASE IF EXISTS pgprof_${tag}_$s" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT

for s in "${services[@]}"; do
  upper=${s^^}
  env "CASCADE_${upper}__SERVER__PORT=${ports[$s]}" \
      "CASCADE_${upper}__DATABASE__URL=$server/pgprof_${tag}_$s" \
      "CASCADE_SCORING__LIFECYCLE__URL=http://127.0.0.1:${ports[lifecycle]}" \
      "CASCADE_OPPORTUNITY__LIFECYCLE__URL=http://127.0.0.1:${ports[lifecycle]}" \
      "CASCADE_SCORING__SERVER__INGEST_RATE_PER_TENANT=0" \
      "$bin/cascade-$s" >"$out/$s.log" 2>&1 &
  pids[$s]=$!
  "$load" --scenario wait-serving --target "http://127.0.0.1:${ports[$s]}" --since-unix-ns "$(date +%s%N)" >/dev/null
done

common=(--lifecycle "http://127.0.0.1:${ports[lifecycle]}" --scoring "http://127.0.0.1:${ports[scoring]}"
        --fixture "$out/fixture-$tag.json")
# The fixture first, so its statements are not counted.
"$load" --scenario get-account --rate 10 --duration 1 "${common[@]}" >/dev/null
# PROFILE_WARMUP_SECONDS of by-ids ingest before the measured run, not
# counted: the tables as a bench's later runs meet them (grown, and with the
# dead rows a server without autovacuum keeps).
if (( ${PROFILE_WARMUP_SECONDS:-0} > 0 )); then
  "$load" --scenario record-activities --concurrency 8 --batch 500 \
    --duration "$PROFILE_WARMUP_SECONDS" "${common[@]}" >/dev/null
  sleep 3
fi
psql -q "$url" -c "SELECT pg_stat_statements_reset()" >/dev/null

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
pg_cpu() {
  local total=0 pid
  for pid in $(pgrep -f 'postgres: ' || true); do
    [[ -r /proc/$pid/stat ]] && total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "$total"
}
declare -A cpu0=()
for s in "${services[@]}"; do cpu0[$s]=$(cpu "${pids[$s]}"); done
pg0=$(pg_cpu)

# Sample what the backends of the run's databases are doing, every 20 ms from
# one psql session (\watch): a psql started per sample cost about 50 ms of
# CPU each, most of a core taken from the suite being measured.
{
  timeout "$seconds" psql -qtA "$url" -f <(printf '%s \\watch 0.02\n' \
    "SELECT datname, state, coalesce(wait_event_type, '-'), coalesce(wait_event, '-') \
      FROM pg_stat_activity WHERE datname LIKE 'pgprof_${tag}_%' AND pid <> pg_backend_pid()") || true
} >"$out/activity.txt" &
sampler=$!

# PROFILE_ARGS adds options, e.g. "--rate 1000 --batch 10" for crossing-latency.
# The generator's own CPU too (it shares the two cores): GNU time when present.
timer=()
[[ -x /usr/bin/time ]] && timer=(/usr/bin/time -o "$out/load.cpu" -f '%U %S')
rm -f "$out/load.cpu"
# shellcheck disable=SC2086
"${timer[@]}" "$load" --scenario "$scenario" --concurrency "${PROFILE_CONCURRENCY:-8}" --batch "${PROFILE_BATCH:-500}" \
  --duration "$seconds" --json "$out/load.json" "${common[@]}" ${PROFILE_ARGS:-} | tee "$out/load.txt"
wait "$sampler" || true
# Let deliveries drain a little so their statements are counted too.
sleep 3

hz=$(getconf CLK_TCK)
{
  echo "# pg-profile: $scenario for ${seconds}s, $(date -u +%FT%TZ)"
  cat "$out/load.txt"
  echo
  echo "## CPU seconds during the run"
  for s in "${services[@]}"; do
    printf '%-12s %6.2f\n' "$s" "$(awk -v a="$(cpu "${pids[$s]}")" -v b="${cpu0[$s]}" -v hz="$hz" 'BEGIN {print (a - b) / hz}')"
  done
  printf '%-12s %6.2f\n' postgres "$(awk -v a="$(pg_cpu)" -v b="$pg0" -v hz="$hz" 'BEGIN {print (a - b) / hz}')"
  if [[ -s $out/load.cpu ]]; then
    printf '%-12s %6.2f\n' generator "$(awk '{print $1 + $2}' "$out/load.cpu")"
  fi
  echo
  echo "## Backend states sampled every 20 ms (database, state, wait type, wait event: share of samples)"
  sort "$out/activity.txt" | uniq -c | sort -rn | awk -v n="$(wc -l <"$out/activity.txt")" \
    '{c=$1; $1=""; printf "%6.1f%%  %s\n", 100 * c / n, $0}' | head -25
  echo
  echo "## Statements by total time"
  psql -q "$url" -P pager=off -c "SELECT d.datname AS db, s.calls, round(s.total_exec_time::numeric, 0) AS total_ms,
      round(s.mean_exec_time::numeric, 3) AS mean_ms, round(s.rows::numeric / greatest(s.calls, 1), 1) AS rows_per_call,
      round((s.shared_blks_hit + s.shared_blks_read)::numeric / greatest(s.calls, 1), 0) AS bufs_per_call,
      left(regexp_replace(s.query, '\\s+', ' ', 'g'), 110) AS query
    FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
    WHERE d.datname LIKE 'pgprof_${tag}_%'
    ORDER BY s.total_exec_time DESC LIMIT 30"
  echo "## Statements and transactions per database"
  psql -q "$url" -P pager=off -c "SELECT d.datname AS db, sum(s.calls) AS statements,
      sum(s.calls) FILTER (WHERE s.query ILIKE 'COMMIT%') AS commits
    FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
    WHERE d.datname LIKE 'pgprof_${tag}_%' GROUP BY d.datname ORDER BY 1"
  echo "## Row writes per table (updates that were HOT need no index entries; dead rows wait for vacuum)"
  for s in "${services[@]}"; do
    psql -q "$server/pgprof_${tag}_$s" -P pager=off -c "SELECT '$s' AS service, relname AS table, n_tup_ins AS inserted,
        n_tup_upd AS updated, n_tup_hot_upd AS hot, n_tup_del AS deleted, n_dead_tup AS dead
      FROM pg_stat_user_tables WHERE n_tup_ins + n_tup_upd + n_tup_del > 0 ORDER BY n_tup_ins + n_tup_upd DESC LIMIT 8"
  done
} >"$out/summary.txt"
echo "pg-profile: wrote $out/summary.txt" >&2
