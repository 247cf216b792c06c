#!/usr/bin/env bash
# Worker-pool scaling by cost: the total CPU time of the weir processes per event for 1, 2
# and 4 workers reading the same topic to its end (`--until-caught-up`), for a topic keyed by
# the window key and for a round-robin one the pool repartitions. (The rebalance pause, on a
# live topic: benches/pool_pause.sh.) The broker is librdkafka's mock cluster in a
# process of its own (benches/src/bin/mock_kafka.rs), so that what is measured is weir, not
# the broker: a 2-core machine cannot host a real broker and two busy workers.
#   benches/pool_cost.sh [EVENTS] [ROUNDS]         (default: 400000 2)
#   MODES="keyed repartitioned"  WORKERS="1 2 4"  PARTITIONS=12
#   PROFILE=debug                 debug builds (ratios only; absolute figures are release's)
#   WEIR_BENCH_NO_BUILD=1         the binaries already in CARGO_TARGET_DIR, not built first
# Prints, per mode, round and worker count: wall seconds, weir CPU seconds (user+system of
# every worker, from /usr/bin/time), CPU microseconds per event, window rows (equal for
# every run: a sanity check), and the ratio of CPU per event to 1 worker's of the same
# round (the bar: at most 1.15).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/lib.sh
source "$repo/benches/lib.sh"
N=${1:-400000}
ROUNDS=${2:-2}
MODES=${MODES:-keyed repartitioned}
WORKERS=${WORKERS:-1 2 4}
PARTITIONS=${PARTITIONS:-12}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}
PROFILE=${PROFILE:-release}
flag=--release
if [[ $PROFILE == debug ]]; then flag=""; fi
# WEIR_BENCH_NO_BUILD=1: use the binaries already built (a release build takes long)
[[ -n "${WEIR_BENCH_NO_BUILD:-}" ]] || (cd "$repo" && cargo build $flag -q -p weir-cli --bin weir &&
  cargo build $flag -q -p weir-benches --bin mock_kafka)
WEIR=$CARGO_TARGET_DIR/$PROFILE/weir
MOCK=$CARGO_TARGET_DIR/$PROFILE/mock_kafka
work=$(mktemp -d)
mock_pid=""
stop_mock() {
  if [[ -n "$mock_pid" ]]; then kill "$mock_pid" 2>/dev/null || true; wait "$mock_pid" 2>/dev/null || true; fi
  mock_pid=""
}
trap 'stop_mock; rm -rf "$work"' EXIT
"$WEIR" generate data-ingestion --count "$N" --seed 42 --out "$work/events.ndjson" 2>/dev/null
stamp=$(date +%s)
name() { echo "pc$stamp-$1-$2-$3"; } # mode, round, workers

start_mock() { # $1 = mode; sets BROKERS
  local args=(--partitions "$PARTITIONS" --topic events --ignore-stdin)
  if [[ $1 == keyed ]]; then args+=(--key datasetName); fi
  if [[ $1 == repartitioned ]]; then
    # the internal topics, made with the loaded topic's (lifted) retention limits
    for r in $(seq 1 "$ROUNDS"); do
      for w in $WORKERS; do args+=(--more-topic "$(name "$1" "$r" "$w")-events-repartition"); done
    done
  fi
  "$MOCK" "${args[@]}" "$work/events.ndjson" >"$work/mock.out" 2>"$work/mock.err" &
  mock_pid=$!
  mock_ready "$mock_pid" "$work/mock.out" "$work/mock.err"
}

pipeline() { # $1 = dir, $2 = pipeline name, $3 = mode
  local keyed=""
  if [[ $3 == keyed ]]; then keyed="partitioned_by: [datasetName]"; fi
  bench_pipeline "$2" "$1" \
    "kafka: { brokers: \"$BROKERS\", topic: events, group_id: $2, start_from: earliest }
    $keyed" "checkpoint: { dir: $1/state, interval: 10s }" >"$1/p.yaml"
}

run_pool() { # $1 = mode, $2 = round, $3 = workers; prints "wall cpu rows"
  local dir="$work/$1-$2-$3" pids=() t0 t1
  mkdir -p "$dir"
  pipeline "$dir" "$(name "$1" "$2" "$3")" "$1"
  t0=$(date +%s.%N)
  for w in $(seq 0 $(($3 - 1))); do
    RUST_LOG=warn /usr/bin/time -f "%U %S" -o "$dir/w$w.time" \
      "$WEIR" run "$dir/p.yaml" --worker "w$w" --until-caught-up >"$dir/w$w.out" 2>"$dir/w$w.err" &
    pids+=($!)
  done
  local i=0
  for p in "${pids[@]}"; do
    if ! wait "$p"; then
      echo "worker w$i failed; the end of its log:" >&2
      tail -20 "$dir/w$i.err" >&2
      exit 1
    fi
    i=$((i + 1))
  done
  t1=$(date +%s.%N)
  local cpu rows
  cpu=$(cat "$dir"/w*.time | awk '{s += $1 + $2} END {printf "%.2f", s}')
  rows=$(cat "$dir"/out.*.ndjson | wc -l)
  echo "$(echo "$t1 - $t0" | bc) $cpu $rows"
}

echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); $N events, $PARTITIONS partitions"
for mode in $MODES; do
  start_mock "$mode"
  printf "%-14s %-5s %-7s %8s %9s %12s %6s %10s\n" mode round workers wall_s cpu_s cpu_us/event rows vs_1_worker
  for r in $(seq 1 "$ROUNDS"); do
    one=""
    for w in $WORKERS; do
      read -r wall cpu rows < <(run_pool "$mode" "$r" "$w")
      per=$(echo "scale=3; $cpu * 1000000 / $N" | bc)
      if [[ -z "$one" ]]; then one=$per; fi
      printf "%-14s %-5s %-7s %8.1f %9s %12s %6s %10s\n" "$mode" "$r" "$w" "$wall" "$cpu" "$per" "$rows" \
        "$(echo "scale=3; $per / $one" | bc)"
    done
  done
  stop_mock
done
