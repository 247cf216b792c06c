#!/usr/bin/env bash
# Worker-pool benchmark: the Kafka benchmark's pipeline (decode + 1-minute windows by
# datasetName + file sink) over a topic of EVENTS data-ingestion events in 12 partitions keyed
# by datasetName, run as a pool of 1 worker and of 2 workers, alternately in the same run;
# each worker pinned to one core with taskset when the machine has two or more.
#   benches/pool.sh [EVENTS] [ROUNDS]     (default: 400000 2)
#   REPARTITION=1 benches/pool.sh ...     the topic is produced round-robin (not keyed), and
#                                         the pool repartitions it through an internal topic
# Prints each run's wall time (start to the last worker's exit, `--until-caught-up`), events
# per second, the broker's CPU use (cores), and the ratio 2 workers / 1 worker (the bar of the
# worker-pool issue is 1.6). Uses a broker of its own with fresh SQLite storage (port 9094,
# `scripts/kafka.sh`), since tansu slows down as its file grows.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/lib.sh
source "$repo/benches/lib.sh"
N=${1:-400000}
ROUNDS=${2:-2}
export WEIR_KAFKA_PORT=${WEIR_POOL_BENCH_KAFKA_PORT:-9094}
BROKERS=${KAFKA_BROKERS:-127.0.0.1:$WEIR_KAFKA_PORT}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}
(cd "$repo" && cargo build --release -q -p weir-cli --bin weir)
WEIR=$CARGO_TARGET_DIR/release/weir
if [[ -z "${KAFKA_BROKERS:-}" ]]; then
  "$repo/scripts/kafka.sh" stop >/dev/null 2>&1 || true
  "$repo/scripts/kafka.sh" reset
  "$repo/scripts/kafka.sh" start
  trap '"$repo/scripts/kafka.sh" stop >/dev/null 2>&1 || true' EXIT
fi
pidfile=${WEIR_CACHE:-$HOME/.cache/weir}/broker/run/tansu-$WEIR_KAFKA_PORT.pid
broker_pid=$(cat "$pidfile" 2>/dev/null || true)
topic="bench-pool-$N-$(date +%s)"
work=$(mktemp -d)
if [[ -n "${REPARTITION:-}" ]]; then
  echo "producing $N events to $topic (12 partitions, round-robin)..." >&2
  "$WEIR" generate data-ingestion --count "$N" --seed 42 --out "$work/events.ndjson" 2>/dev/null
  py=${WEIR_VENV:-$HOME/.cache/weir/venv}/bin/python
  "$py" "$repo/tests/kafka/kafka_tool.py" create "$BROKERS" "$topic" 12
  "$py" "$repo/tests/kafka/kafka_tool.py" produce "$BROKERS" "$topic" "$work/events.ndjson" --round-robin
  keyed=""
else
  echo "producing $N events to $topic (12 partitions, keyed by datasetName)..." >&2
  "$WEIR" generate data-ingestion --count "$N" --seed 42 --kafka "$BROKERS/$topic" --partitions 12 2>/dev/null
  keyed="partitioned_by: [datasetName]"
fi
cores=$(nproc)
broker_cpu() { # utime+stime of the broker in seconds
  if [[ -n "$broker_pid" && -r /proc/$broker_pid/stat ]]; then
    awk -v hz="$(getconf CLK_TCK)" '{print ($14+$15)/hz}' "/proc/$broker_pid/stat"
  else echo 0; fi
}
pin() { # pin worker $1 (0-based) to a core of its own when there are enough
  if (( cores >= 2 )) && command -v taskset >/dev/null; then echo "taskset -c $(( $1 % cores ))"; fi
}
run_pool() { # $1 = workers; prints seconds
  local dir="$work/pool-$1-$RANDOM"
  mkdir -p "$dir"
  bench_pipeline "pool-bench-$RANDOM$RANDOM" "$dir" \
    "kafka: { brokers: \"$BROKERS\", topic: $topic, group_id: weir-pool-bench-$RANDOM-$(date +%s%N), start_from: earliest }
    $keyed" "checkpoint: { dir: $dir/state, interval: 10s }" >"$dir/p.yaml"
  local t0 pids=()
  t0=$(date +%s.%N)
  for w in $(seq 0 $(( $1 - 1 ))); do
    # shellcheck disable=SC2046
    RUST_LOG=warn $(pin "$w") "$WEIR" run "$dir/p.yaml" --worker "w$w" --until-caught-up \
      >"$dir/w$w.out" 2>"$dir/w$w.err" &
    pids+=($!)
  done
  local i=0
  for p in "${pids[@]}"; do
    if ! wait "$p"; then
      echo "worker w$i failed; the end of its log:" >&2
      tail -20 "$dir/w$i.err" >&2
      exit 1
    fi
    i=$(( i + 1 ))
  done
  echo "$(date +%s.%N) - $t0" | bc
  # every window once over the workers' files
  local rows
  rows=$(cat "$dir"/out.*.ndjson | wc -l)
  echo "  ($1 worker(s): $rows window rows)" >&2
}
printf "%-6s %-9s %10s %12s %13s\n" round workers seconds events/s broker-cores
declare -A best
for r in $(seq 1 "$ROUNDS"); do
  for w in 1 2; do
    c0=$(broker_cpu)
    s=$(run_pool "$w")
    c1=$(broker_cpu)
    rate=$(echo "$N / $s" | bc)
    cpu=$(echo "scale=2; ($c1 - $c0) / $s" | bc)
    printf "%-6s %-9s %10.1f %12s %13s\n" "$r" "$w" "$s" "$rate" "$cpu"
    if [[ -z "${best[$w]:-}" ]] || (( rate > ${best[$w]} )); then best[$w]=$rate; fi
  done
done
echo "best events/s: 1 worker ${best[1]}, 2 workers ${best[2]}; ratio $(echo "scale=2; ${best[2]} / ${best[1]}" | bc) (bar 1.6)"
rm -rf "$work"
