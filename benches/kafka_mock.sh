#!/usr/bin/env bash
# Kafka path without the test broker in the way: EVENTS data-ingestion events
# (benches/events.sh) loaded into librdkafka's mock cluster (benches/src/bin/mock_kafka.rs,
# its own process, 12 partitions keyed by datasetName, lz4 as weir's producer), then,
# alternately and in the same run:
#   bare   a bare rdkafka consumer that only counts messages (benches/src/bin/kafka_count.rs)
#   kafka  weir's pipeline over the topic (decode + 1-minute windows + file sink,
#          `--until-caught-up`, a fresh consumer group each time: benches/kafka.sh's pipeline)
#   file   the same pipeline with a file source over the same NDJSON file
#   benches/kafka_mock.sh [EVENTS] [ROUNDS]     (default: 2000000 3)
# Prints wall seconds, messages per second and CPU seconds (user+system of that process only;
# the mock cluster runs in its own process) of each, weir's rate against the bare consumer's
# (the bar is 0.8) and events per CPU-second of the Kafka path against the file path's (the
# bar: within 1.5x). PARALLELISM (default 2) is weir's --parallelism; MOCK_LIVE=1 starts the
# first round while the mock is still being loaded (producing concurrently) instead of after.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/lib.sh
source "$repo/benches/lib.sh"
N=${1:-2000000}
ROUNDS=${2:-3}
PAR=${PARALLELISM:-2}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}
# WEIR_BENCH_NO_BUILD=1: use the binaries already built (a release build takes long)
[[ -n "${WEIR_BENCH_NO_BUILD:-}" ]] ||
  (cd "$repo" && cargo build --release -q -p weir-cli -p weir-benches --bin weir --bin kafka_count --bin mock_kafka)
WEIR=$CARGO_TARGET_DIR/release/weir
COUNT=$CARGO_TARGET_DIR/release/kafka_count
MOCK=$CARGO_TARGET_DIR/release/mock_kafka
events=$("$repo/benches/events.sh" "$N" "$WEIR")
work=$(mktemp -d)
mock_pid=
cleanup() {
  if [[ -n "$mock_pid" ]]; then kill "$mock_pid" 2>/dev/null || true; wait "$mock_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
live=()
if [[ "${MOCK_LIVE:-0}" == 1 ]]; then live=(--live); fi
"$MOCK" --partitions 12 --key datasetName --topic events --ignore-stdin "${live[@]}" "$events" >"$work/mock.out" 2>"$work/mock.err" &
mock_pid=$!
mock_ready "$mock_pid" "$work/mock.out" "$work/mock.err"
echo "mock cluster at $BROKERS: $(grep '^ready' "$work/mock.out")" >&2

pipeline() { # $1: the source's YAML
  bench_pipeline kafka-mock-bench "$work" "$1"
}
pipeline "file: { path: $events }" >"$work/file.yaml"
# timed NAME CMD...: runs CMD, sets wall/cpu (seconds) from GNU time
timed() {
  local name=$1; shift
  /usr/bin/time -f "%e %U %S" -o "$work/time" "$@" >"$work/$name.out" 2>"$work/$name.err" || {
    echo "$name failed:"; cat "$work/$name.out" "$work/$name.err"; exit 1; }
  read -r wall user sys <"$work/time"
  cpu=$(echo "$user + $sys" | bc -l)
}
printf "%-6s %-8s %8s %12s %8s %14s\n" round path seconds messages/s cpu-s events/cpu-s
row() { printf "%-6s %-8s %8.2f %12.0f %8.2f %14.0f\n" "$1" "$2" "$wall" "$(echo "$N / $wall" | bc -l)" "$cpu" "$(echo "$N / $cpu" | bc -l)"; }
for r in $(seq 1 "$ROUNDS"); do
  timed bare "$COUNT" "$BROKERS" events "$N"
  bare_rate=$(echo "$N / $wall" | bc -l); row "$r" bare
  pipeline "kafka: { brokers: \"$BROKERS\", topic: events, group_id: weir-mock-$r-$(date +%s%N), start_from: earliest }" >"$work/kafka.yaml"
  RUST_LOG=warn timed kafka "$WEIR" run "$work/kafka.yaml" --until-caught-up --parallelism "$PAR"
  grep -q "$N events processed in" "$work/kafka.out" || { echo "weir did not read $N events:"; cat "$work/kafka.out"; exit 1; }
  kafka_rate=$(echo "$N / $wall" | bc -l); kafka_cpu=$cpu; row "$r" kafka
  RUST_LOG=warn timed file "$WEIR" run "$work/file.yaml" --parallelism "$PAR"
  file_cpu=$cpu; row "$r" file
  printf "%-6s weir kafka / bare consumer rate: %.2f   kafka / file CPU per event: %.2f\n" "$r" \
    "$(echo "$kafka_rate / $bare_rate" | bc -l)" "$(echo "$kafka_cpu / $file_cpu" | bc -l)"
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
