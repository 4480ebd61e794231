#!/usr/bin/env bash
# `make bench`: starts the three release binaries on fresh databases, runs
# the load generator's scenarios for BENCH_SECONDS each, samples each
# service's peak RSS, restarts them once on the now-filled databases to time
# start-up, measures the raw INSERT ceiling, and writes
# $BENCH_OUT/report.md and report.json (docs/performance.md); `make bench`
# runs it once per backend.
#
#   BENCH_SECONDS=10          seconds per scenario (2 for a smoke run)
#   BENCH_DATABASE_URL=...    a PostgreSQL server URL, e.g.
#                             postgres://postgres@127.0.0.1:5432/postgres:
#                             fresh databases are created there (psql);
#                             SQLite files in a temporary folder otherwise
#   BENCH_OUT=build/bench     where the report (and the services' logs) go
#   BENCH_PORT_BASE=50161     lifecycle on it, scoring +1, opportunity +2
#   BENCH_SETTLE_SECONDS=60   longest wait for an idle machine before a scenario
#
# The per-tenant ingest limit (200k/s by default) is turned off for the run:
# the bench measures what the services can take, not the limit.
set -euo pipefail
cd "$(dirname "$0")/.."
# glibc gives each thread that contends for malloc an arena of its own and
# keeps freed memory in them; two arenas took scoring's peak RSS under ingest
# from 74 to 64 MiB and lifecycle's from 66 to 42 MiB on SQLite at the same
# ingest rate (docs/performance.md, round 4). The image sets it too.
export MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-2}

seconds=${BENCH_SECONDS:-10}
db_server=${BENCH_DATABASE_URL:-}
out=${BENCH_OUT:-build/bench}
bin=${CARGO_TARGET_DIR:-target}/release
base=${BENCH_PORT_BASE:-50161}
load="$bin/cascade-load"

for b in cascade-lifecycle cascade-scoring cascade-opportunity cascade-load; do
  [[ -x $bin/$b ]] || { echo "bench: $bin/$b is missing; run make bench (it builds them)" >&2; exit 1; }
done

work=$(mktemp -d)
mkdir -p "$out"
rm -f "$out"/*.json "$out"/report.md

declare -A ports=([lifecycle]=$base [scoring]=$((base + 1)) [opportunity]=$((base + 2)))
declare -A pids=() urls=() fresh_ms=() existing_ms=() rss_mib=()
services=(lifecycle scoring opportunity)
run_tag=$(date +%s)
databases=()

if [[ -n $db_server ]]; then
  database=postgres
  server=${db_server%%\?*}
  server=${server%/*}
  for s in "${services[@]}"; do
    name="cascade_bench_${run_tag}_$s"
    psql -q "$db_server" -c "CREATE DATABASE $name" >/dev/null
    databases+=("$name")
    urls[$s]="$server/$name"
  done
  raw_url=$db_server
  raw_concurrency=4
  # The server's settings go into the report: they move the numbers, and a
  # server without autovacuum (some CI images turn it off) lets the dead row
  # versions of the hottest tables pile up through the whole run.
  server_settings=$(psql -qtA "$db_server" -c "SELECT json_object_agg(name, current_setting(name))
    FROM unnest(ARRAY['server_version', 'autovacuum', 'autovacuum_naptime', 'shared_buffers',
      'synchronous_commit', 'fsync', 'max_wal_size', 'checkpoint_timeout']) AS name")
  # Only a JSON object goes into services.json; anything else is "unknown".
  python3 -c 'import json,sys; assert isinstance(json.loads(sys.argv[1]), dict)' "$server_settings" 2>/dev/null \
    || server_settings=null
else
  database=sqlite
  server_settings=null
  for s in "${services[@]}"; do urls[$s]="sqlite://$work/$s.db"; done
  raw_url="sqlite://$work/raw-insert.db"
  # SQLite has one writer: more connections only wait for the lock.
  raw_concurrency=1
fi

stop_all() {
  for s in "${services[@]}"; do
    [[ -n ${pids[$s]:-} ]] && kill -TERM "${pids[$s]}" 2>/dev/null || true
  done
  for s in "${services[@]}"; do
    [[ -n ${pids[$s]:-} ]] && wait "${pids[$s]}" 2>/dev/null || true
    pids[$s]=""
  done
}

cleanup() {
  stop_all
  for name in "${databases[@]}"; do
    psql -q "$db_server" -c "DROP DATABASE IF EXISTS $name" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# Starts one service and sets `serving_ms` to the milliseconds from just
# before the process started to its health reporting SERVING. Scoring logs
# every fold and every late delivery (debug lines of its folder and outbox),
# and on SQLite scoring and lifecycle log every WAL checkpoint, so a crossing
# that stalls can be lined up with them in logs/*.log.
start() {
  local s=$1 upper=${1^^} t0
  t0=$(date +%s%N)
  env "CASCADE_${upper}__SERVER__PORT=${ports[$s]}" \
      "CASCADE_${upper}__DATABASE__URL=${urls[$s]}" \
      "CASCADE_SCORING__LIFECYCLE__URL=http://127.0.0.1:${ports[lifecycle]}" \
      "CASCADE_OPPORTUNITY__LIFECYCLE__URL=http://127.0.0.1:${ports[lifecycle]}" \
      "CASCADE_SCORING__SERVER__INGEST_RATE_PER_TENANT=0" \
      "CASCADE_SCORING__TELEMETRY__LOG_LEVEL=info,cascade_scoring::fold=debug,cascade_chassis::outbox=debug,cascade_chassis::db=debug" \
      "CASCADE_LIFECYCLE__TELEMETRY__LOG_LEVEL=info,cascade_chassis::db=debug" \
      "$bin/cascade-$s" >>"$out/logs/$s.log" 2>&1 &
  pids[$s]=$!
  serving_ms=$("$load" --scenario wait-serving --target "http://127.0.0.1:${ports[$s]}" --since-unix-ns "$t0")
}

mkdir -p "$out/logs"
rm -f "$out"/logs/*.log
printf 'after\t%s\n' "$(IFS=$'\t'; echo "${services[*]}")" >"$out/peak-rss.tsv"
for s in "${services[@]}"; do start "$s"; fresh_ms[$s]=$serving_ms; done
echo "bench: $database, ${seconds}s per scenario; SERVING after ${fresh_ms[lifecycle]} / ${fresh_ms[scoring]} / ${fresh_ms[opportunity]} ms" >&2

common=(--duration "$seconds" --lifecycle "http://127.0.0.1:${ports[lifecycle]}"
        --scoring "http://127.0.0.1:${ports[scoring]}" --fixture "$work/fixture.json")
# Waits until the machine is idle (both cores under 10 % busy over half a
# second, at most BENCH_SETTLE_SECONDS: 60, or 5 in a smoke run), so that a
# scenario does not measure the folds, deliveries and autovacuum the previous
# one left behind; how long each wait took is in the report ("settled before").
settle_max=${BENCH_SETTLE_SECONDS:-$(( seconds >= 10 ? 60 : 5 ))}
settled=()
settle() {
  local label=$1 t0 cpu prev busy total
  t0=$(date +%s%N)
  read -ra prev < <(head -1 /proc/stat)
  while (( ($(date +%s%N) - t0) / 1000000000 < settle_max )); do
    sleep 0.5
    read -ra cpu < <(head -1 /proc/stat)
    # user nice system idle iowait irq softirq steal
    busy=$(( cpu[1] + cpu[2] + cpu[3] + cpu[6] + cpu[7] + cpu[8] - prev[1] - prev[2] - prev[3] - prev[6] - prev[7] - prev[8] ))
    total=$(( busy + cpu[4] + cpu[5] - prev[4] - prev[5] ))
    prev=("${cpu[@]}")
    (( total > 0 && busy * 10 < total )) && break
  done
  settled+=("\"$label\": $(( ($(date +%s%N) - t0) / 1000000 ))")
}
# Each service's peak RSS so far (VmHWM, MiB) after each scenario, in
# $out/peak-rss.tsv: which scenario set a peak the report's one number shows.
peak_rss() {
  local s line=$1
  for s in "${services[@]}"; do
    line+=$'\t'$(awk '/^VmHWM:/ {printf "%.1f", $2 / 1024}' "/proc/${pids[$s]}/status" 2>/dev/null || echo -)
  done
  echo "$line" >>"$out/peak-rss.tsv"
}
bench() {
  local label=$1; shift
  settle "$label"
  "$load" --label "$label" --json "$out/$label.json" "${common[@]}" "$@"
  peak_rss "$label"
}

# The ceiling before the scenarios, and again after them (raw-insert below):
# the report takes the higher, since a disk's commit latency moves within a
# sitting too (docs/performance.md, round 20).
[[ $database == sqlite ]] && first_raw_url="sqlite://$work/raw-insert-first.db" || first_raw_url=$raw_url
bench raw-insert-first --scenario raw-insert --database-url "$first_raw_url" --batch 500 --concurrency "$raw_concurrency"
bench baseline-closed   --scenario baseline --concurrency 32
bench baseline-open     --scenario baseline --rate 2000
bench record-activity   --scenario record-activity --concurrency 32
# Batched ingest by ids and by email, alternating, three times each: one
# run's rate spread by 40 % within a sitting, and the report reads the
# median (docs/performance.md, round 20).
for run in "" -run2 -run3; do
  bench "record-activities$run" --scenario record-activities --concurrency 8 --batch 500
  bench "record-activities-by-email$run" --scenario record-activities-by-email --concurrency 8 --batch 500
done
bench stream-activities --scenario stream-activities --concurrency 4 --batch 500
bench mixed             --scenario mixed --concurrency 16 --batch 50
bench get-account       --scenario get-account --rate 2000
# Reads while ingest runs at half the rate record-activities reached (the median run).
half_rate=$(python3 -c 'import json,statistics,sys; print(max(100, round(statistics.median_low(json.load(open(p))["events_per_s"] for p in sys.argv[1:]) / 2)))' "$out"/record-activities.json "$out"/record-activities-run[0-9].json)
bench get-account-under-ingest --scenario get-account --rate 2000 --ingest-rate "$half_rate" --batch 500
bench get-account-score --scenario get-account-score --rate 2000
bench crossing-latency  --scenario crossing-latency --rate 1000 --batch 10 --probe-interval-ms 100
bench simulate          --scenario simulate --concurrency 4 --batch 1000 --activities 1000000
# A tenant onboarding 50,000 accounts with a contact each (5,000 in a smoke run).
import_accounts=$(( seconds >= 10 ? 50000 : 5000 ))
bench import            --scenario import --accounts "$import_accounts" --contacts 1 --batch 1000 --concurrency 2

# Peak RSS over the whole run, before the restart.
for s in "${services[@]}"; do
  kib=$(awk '/^VmHWM:/ {print $2}' "/proc/${pids[$s]}/status")
  rss_mib[$s]=$(awk -v k="$kib" 'BEGIN {printf "%.1f", k / 1024}')
done
# GetAccount beside ingest again, with the read path first: the reading client and lifecycle
# at real-time priority (SCHED_FIFO), the ingest beside it from a generator
# of its own at the usual priority. On two shared cores the reads wait for a
# core, the client's as much as lifecycle's (docs/performance.md, round 29);
# this run shows what is left once that wait is taken out. It is a note
# beside the target, not its measure. It runs last, after the peak RSS is
# read: with lifecycle first in line, scoring answers ingest more slowly and
# holds more batches at once than in any other scenario (its peak RSS 68.5
# MiB against 54.5 on PostgreSQL in round 29), and it comes after the
# import's 50,000 accounts. Skipped where chrt is not permitted.
read_path_first() {
  local label=get-account-under-ingest-read-path-first
  settle "$label"
  "$load" --label "$label-ingest" --json "$out/$label-ingest.json" "${common[@]}" \
    --duration "$((seconds + 2))" --scenario record-activities --rate "$(awk -v r="$half_rate" 'BEGIN { print r / 500 }')" --batch 500 >/dev/null &
  local ingest=$!
  sleep 1
  chrt -a -f -p 10 "${pids[lifecycle]}" >/dev/null
  chrt -f 10 "$load" --label "$label" --json "$out/$label.json" "${common[@]}" --scenario get-account --rate 2000 || true
  chrt -a -o -p 0 "${pids[lifecycle]}" >/dev/null || true
  # Reads without their ingest would be an idle run under this run's name.
  if ! wait "$ingest"; then
    echo "bench: the ingest beside $label failed; its reads are left out of the report" >&2
    rm -f "$out/$label.json" "$out/$label-ingest.json"
  fi
  peak_rss "$label"
}
if chrt -f 10 true 2>/dev/null; then
  read_path_first
else
  echo "bench: chrt -f not permitted here; the read-path-first run is skipped" >&2
fi
stop_all

# Start-up on the databases the run filled.
for s in "${services[@]}"; do start "$s"; existing_ms[$s]=$serving_ms; done
stop_all

bench raw-insert --scenario raw-insert --database-url "$raw_url" --batch 500 --concurrency "$raw_concurrency"
[[ $database == sqlite ]] && raw_url="sqlite://$work/raw-insert-bare.db"
bench raw-insert-bare --scenario raw-insert --raw-table bare --database-url "$raw_url" --batch 500 --concurrency "$raw_concurrency"

{
  printf '{"database": "%s", "bench_seconds": %s, "services": {' "$database" "$seconds"
  sep=""
  for s in "${services[@]}"; do
    printf '%s"%s": {"rss_peak_mib": %s, "serving_ms_fresh": %s, "serving_ms_existing": %s}' \
      "$sep" "$s" "${rss_mib[$s]}" "${fresh_ms[$s]}" "${existing_ms[$s]}"
    sep=", "
  done
  printf '}, "server_settings": %s, "note": "%s"}\n' "$server_settings" "Services ran with auth disabled and CASCADE_SCORING__SERVER__INGEST_RATE_PER_TENANT=0 (no per-tenant ingest limit); load generator and services share the machine."
} >"$out/services.json"

(IFS=,; echo "{${settled[*]}}") >"$out/settled.json"
"$load" --scenario report --dir "$out" >/dev/null
echo "bench: wrote $out/report.md and $out/report.json" >&2
