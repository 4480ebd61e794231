#!/usr/bin/env bash
# Profiles scoring (and lifecycle) with perf while cascade-load runs one ingest
# scenario against fresh SQLite databases; prints the CPU per thread and each
# service's hottest symbols (docs/performance.md, "How to reproduce").
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${CARGO_TARGET_DIR:-target}/release
out=${PROFILE_OUT:-build/profile}
seconds=${PROFILE_SECONDS:-10}
scenario=${PROFILE_SCENARIO:-record-activities}
base=${PROFILE_PORT_BASE:-50171}
command -v perf >/dev/null || { echo "profile: needs perf (linux-perf / linux-tools)" >&2; exit 1; }
work=$(mktemp -d)
mkdir -p "$out"
pids=()
trap 'kill ${pids[@]} 2>/dev/null || true; rm -rf "$work"' EXIT
start() {
  local s=$1 port=$2 upper=${1^^}
  env "CASCADE_${upper}__SERVER__PORT=$port" "CASCADE_${upper}__DATABASE__URL=sqlite://$work/$s.db" \
      "CASCADE_SCORING__LIFECYCLE__URL=http://127.0.0.1:$base" \
      "CASCADE_OPPORTUNITY__LIFECYCLE__URL=http://127.0.0.1:$base" \
      "CASCADE_SCORING__SERVER__INGEST_RATE_PER_TENANT=0" \
      "$bin/cascade-$s" >>"$out/$s.log" 2>&1 &
  pids+=($!)
  "$bin/cascade-load" --scenario wait-serving --target "http://127.0.0.1:$port" --since-unix-ns "$(date +%s%N)" >/dev/null
}
start lifecycle "$base"
start scoring $((base + 1))
scoring_pid=${pids[1]}; lifecycle_pid=${pids[0]}
common=(--lifecycle "http://127.0.0.1:$base" --scoring "http://127.0.0.1:$((base + 1))" --fixture "$work/fixture.json")
# Fixture first, so the profile holds the scenario only.
"$bin/cascade-load" "${common[@]}" --scenario get-account --rate 10 --duration 1 >/dev/null
# System-wide, so threads started during the run (sqlx's SQLite workers)
# are sampled too; the report splits by process.
perf record -a -F 499 -o "$out/all.perf" -- sleep "$seconds" 2>/dev/null &
p1=$!
"$bin/cascade-load" "${common[@]}" --scenario "$scenario" --concurrency 8 --batch 500 --duration "$seconds" --json "$out/$scenario.json" || true
wait $p1
{
  echo "== $scenario: $(grep -o '"events_per_s": *[0-9.]*' "$out/$scenario.json" | head -1)"
  for s in scoring lifecycle; do
    pid=$scoring_pid; [[ $s == lifecycle ]] && pid=$lifecycle_pid
    echo "== $s peak RSS: $(awk '/^VmHWM:/ {printf "%.1f MiB", $2 / 1024}' "/proc/$pid/status")"
  done
  echo "== CPU per process (share of all samples, 2 CPUs = 100 %)"
  # head closes the pipe early; perf's SIGPIPE is not a failure here.
  perf report -i "$out/all.perf" --stdio --sort pid 2>/dev/null | grep -v '^#' | grep -v '^$' | head -8 || true
  for s in scoring lifecycle; do
    pid=$scoring_pid; [[ $s == lifecycle ]] && pid=$lifecycle_pid
    echo "== $s: share per library"
    perf report -i "$out/all.perf" --pid "$pid" --stdio --sort dso 2>/dev/null | grep -v '^#' | grep -v '^$' | head -6 || true
    echo "== $s: hottest symbols"
    perf report -i "$out/all.perf" --pid "$pid" --stdio --sort sym 2>/dev/null | grep -v '^#' | grep -v '^$' | head -30 || true
  done
} | tee "$out/summary.txt"
