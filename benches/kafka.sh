#!/usr/bin/env bash
# Kafka benchmark: a topic of 2,000,000 data-ingestion events in 12 partitions (made once, kept
# in the local broker), then, alternately and in the same run, a bare rdkafka consumer that
# only counts messages (benches/src/bin/kafka_count.rs) and weir's pipeline (decode +
# 1-minute windows + file sink, `--until-caught-up`, a fresh consumer group each time).
#   benches/kafka.sh [EVENTS] [ROUNDS]     (default: 2000000 3)
# Prints messages per second of both, weir's ratio to the bare consumer (the bar is 0.8), and
# the broker's CPU use during each run (cores). Uses its own broker (scripts/kafka.sh on port
# 9093, with its own SQLite file, kept between runs): tansu's SQLite storage slows down as the
# file grows, so the tests' topics stay out of the benchmark's broker.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/lib.sh
source "$repo/benches/lib.sh"
N=${1:-2000000}
ROUNDS=${2:-3}
export WEIR_KAFKA_PORT=${WEIR_BENCH_KAFKA_PORT:-9093}
BROKERS=${KAFKA_BROKERS:-127.0.0.1:$WEIR_KAFKA_PORT}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}
(cd "$repo" && cargo build --release -q -p weir-cli -p weir-benches --bin weir --bin kafka_count)
WEIR=$CARGO_TARGET_DIR/release/weir
COUNT=$CARGO_TARGET_DIR/release/kafka_count
if [[ -z "${KAFKA_BROKERS:-}" ]]; then
  "$repo/scripts/kafka.sh" start
fi
pidfile=${WEIR_CACHE:-$HOME/.cache/weir}/broker/run/tansu-$WEIR_KAFKA_PORT.pid
broker_pid=$(cat "$pidfile" 2>/dev/null || true)
topic="bench-ingest-$N-v1"
py=${WEIR_TEST_PYTHON:-${WEIR_CACHE:-$HOME/.cache/weir}/venv/bin/python}
end_offsets() { "$py" - "$BROKERS" "$topic" <<'PY'
import sys
from confluent_kafka import Consumer, TopicPartition
c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": "weir-bench-probe"})
md = c.list_topics(sys.argv[2], timeout=30)
t = md.topics.get(sys.argv[2])
if t is None or t.error is not None:
    print(0)
else:
    print(sum(c.get_watermark_offsets(TopicPartition(sys.argv[2], p), timeout=30)[1] for p in t.partitions))
PY
}
have=$(end_offsets)
if [[ "$have" != "$N" ]]; then
  if [[ "$have" != 0 ]]; then topic="$topic-$(date +%s)"; fi
  echo "producing $N events to $topic (12 partitions, keyed by datasetName)..." >&2
  t0=$(date +%s.%N)
  "$WEIR" generate data-ingestion --count "$N" --seed 42 --kafka "$BROKERS/$topic" --partitions 12 2>/dev/null
  echo "produced in $(echo "$(date +%s.%N) - $t0" | bc) s" >&2
fi
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
broker_cpu() { # utime+stime of the broker in seconds
  if [[ -n "$broker_pid" && -r /proc/$broker_pid/stat ]]; then
    awk -v hz="$(getconf CLK_TCK)" '{print ($14+$15)/hz}' "/proc/$broker_pid/stat"
  else echo 0; fi
}
run_weir() {
  bench_pipeline kafka-bench "$work" \
    "kafka: { brokers: \"$BROKERS\", topic: $topic, group_id: weir-bench-$RANDOM-$(date +%s%N), start_from: earliest }" \
    >"$work/p.yaml"
  RUST_LOG=warn "$WEIR" run "$work/p.yaml" --until-caught-up --parallelism 2 >"$work/weir.out"
}
printf "%-6s %-14s %10s %14s %14s\n" round engine seconds messages/s broker-cores
for r in $(seq 1 "$ROUNDS"); do
  c0=$(broker_cpu); t0=$(date +%s.%N)
  out=$("$COUNT" "$BROKERS" "$topic" "$N")
  t1=$(date +%s.%N); c1=$(broker_cpu)
  bare_s=$(echo "$t1 - $t0" | bc -l)
  bare_rate=$(echo "$N / $bare_s" | bc -l)
  printf "%-6s %-14s %10.2f %14.0f %14.2f\n" "$r" bare-consumer "$bare_s" "$bare_rate" "$(echo "($c1 - $c0) / $bare_s" | bc -l)"
  c0=$(broker_cpu); t0=$(date +%s.%N)
  run_weir
  t1=$(date +%s.%N); c1=$(broker_cpu)
  weir_s=$(echo "$t1 - $t0" | bc -l)
  weir_rate=$(echo "$N / $weir_s" | bc -l)
  printf "%-6s %-14s %10.2f %14.0f %14.2f\n" "$r" weir "$weir_s" "$weir_rate" "$(echo "($c1 - $c0) / $weir_s" | bc -l)"
  grep -q "$N events processed in" "$work/weir.out" || { echo "weir did not read $N events:"; cat "$work/weir.out"; exit 1; }
  printf "%-6s ratio weir / bare consumer: %.2f\n" "$r" "$(echo "$weir_rate / $bare_rate" | bc -l)"
done
