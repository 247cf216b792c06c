#!/usr/bin/env bash
# Before/after benchmark of two weir binaries in one run (e.g. a refactoring's base and head):
# the benchmarks' pipeline (benches/lib.sh: 1-minute windows per dataset into a file) over the
# same events, A and B alternately (A B A B ...), so that a machine's drift hits both alike.
#   benches/ab.sh WEIR_A WEIR_B [EVENTS] [ROUNDS]        (default: 2000000 5)
#   AB_KAFKA=1 benches/ab.sh ...                          also from a 12-partition Kafka topic
#   AB_KAFKA=mock benches/ab.sh ...                       ... on librdkafka's mock cluster
#                                  (MOCK_KAFKA: its binary, default the release mock_kafka)
# Cases: the file source at --parallelism 1 and 2 (benches/events.sh: `weir generate`, seed
# 42), and with AB_KAFKA=1 a Kafka topic read to its end (`--until-caught-up`, parallelism 2,
# a fresh group each run) on the benchmark broker of benches/kafka.sh (port 9093, its topic
# made once). Prints per case each binary's median wall and CPU seconds and events per
# second, the median of the pairs' B/A wall ratios, and checks that A's and B's rows are
# identical. Build the binaries first (`cargo build --release -p weir-cli` at each commit).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/lib.sh
source "$repo/benches/lib.sh"
A=$(realpath "${1:?usage: benches/ab.sh WEIR_A WEIR_B [EVENTS] [ROUNDS]}")
B=$(realpath "${2:?usage: benches/ab.sh WEIR_A WEIR_B [EVENTS] [ROUNDS]}")
N=${3:-2000000}
ROUNDS=${4:-5}
events=$("$repo/benches/events.sh" "$N" "$A")
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT

# one_run LABEL BIN CASE PIPELINE ARGS...: appends "CASE LABEL wall cpu" to the results
one_run() {
  local label=$1 bin=$2 case=$3 pipeline=$4; shift 4
  local out="$work/$case-$label"
  mkdir -p "$out"
  sed "s#@OUT@#$out#g; s#@GROUP@#ab-$RANDOM-$(date +%s%N)#g" "$pipeline" >"$out/p.yaml"
  rm -f "$out/out.ndjson"
  RUST_LOG=warn /usr/bin/time -o "$out/time" -f '%e %U %S' "$bin" run "$out/p.yaml" "$@" >"$out/summary"
  grep -q "$N events processed in" "$out/summary" || { echo "$label did not read $N events:"; cat "$out/summary"; exit 1; }
  read -r wall usr sys <"$out/time"
  echo "$case $label $wall $(echo "$usr + $sys" | bc -l)" >>"$work/results"
  sort "$out/out.ndjson" >"$out/rows"
}

# ab CASE PIPELINE ARGS...: the case's rounds, A then B each round, and their rows compared
ab() {
  local case=$1 pipeline=$2; shift 2
  for _ in $(seq 1 "$ROUNDS"); do
    one_run A "$A" "$case" "$pipeline" "$@"
    one_run B "$B" "$case" "$pipeline" "$@"
  done
  cmp -s "$work/$case-A/rows" "$work/$case-B/rows" \
    || { echo "$case: A's and B's rows differ" >&2; exit 1; }
}

bench_pipeline ab @OUT@ "file: { path: $events }" >"$work/file.yaml"
ab file-p1 "$work/file.yaml" --parallelism 1
ab file-p2 "$work/file.yaml" --parallelism 2

if [[ "${AB_KAFKA:-}" == mock ]]; then
  # librdkafka's mock cluster in a process of its own (benches/src/bin/mock_kafka.rs), loaded
  # with the same events keyed by datasetName: weir's Kafka path without a broker's limits
  mock=${MOCK_KAFKA:-${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}/release/mock_kafka}
  "$mock" --partitions 12 --key datasetName --topic events --ignore-stdin "$events" >"$work/mock.out" &
  mock_pid=$!
  trap 'kill "$mock_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
  until grep -q '^ready' "$work/mock.out" 2>/dev/null; do
    kill -0 "$mock_pid" 2>/dev/null || { echo "mock_kafka exited:"; cat "$work/mock.out"; exit 1; }
    sleep 0.2
  done
  bench_pipeline ab @OUT@ \
    "kafka: { brokers: \"$(head -1 "$work/mock.out")\", topic: events, group_id: @GROUP@, start_from: earliest }" \
    >"$work/kafka.yaml"
  ab kafka-mock "$work/kafka.yaml" --until-caught-up --parallelism 2
elif [[ -n "${AB_KAFKA:-}" ]]; then
  export WEIR_KAFKA_PORT=${WEIR_BENCH_KAFKA_PORT:-9093}
  brokers=${KAFKA_BROKERS:-127.0.0.1:$WEIR_KAFKA_PORT}
  [[ -n "${KAFKA_BROKERS:-}" ]] || "$repo/scripts/kafka.sh" start
  topic="bench-ab-$N-v1"
  # made once per broker: an existing topic is reused only when it holds exactly N events
  py=${WEIR_TEST_PYTHON:-${WEIR_CACHE:-$HOME/.cache/weir}/venv/bin/python}
  have=$("$py" - "$brokers" "$topic" <<'PY'
import sys
from confluent_kafka import Consumer, TopicPartition
c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": "weir-bench-probe"})
t = c.list_topics(sys.argv[2], timeout=30).topics.get(sys.argv[2])
print(0 if t is None or t.error is not None else
      sum(c.get_watermark_offsets(TopicPartition(sys.argv[2], p), timeout=30)[1] for p in t.partitions))
PY
)
  if [[ "$have" != "$N" ]]; then
    [[ "$have" == 0 ]] || topic="$topic-$(date +%s)"
    "$A" generate data-ingestion --count "$N" --seed 42 --kafka "$brokers/$topic" --partitions 12 2>/dev/null
  fi
  bench_pipeline ab @OUT@ \
    "kafka: { brokers: \"$brokers\", topic: $topic, group_id: @GROUP@, start_from: earliest }" \
    >"$work/kafka.yaml"
  ab kafka-p2 "$work/kafka.yaml" --until-caught-up --parallelism 2
fi

echo "A: $A"
echo "B: $B"
python3 - "$work/results" "$N" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
n = int(sys.argv[2])
cases = list(dict.fromkeys(r[0] for r in rows))
print(f"{'case':<10} {'bin':<3} {'wall_s':>7} {'cpu_s':>7} {'events/s':>10}   (medians of {len(rows) // len(cases) // 2} runs)")
for case in cases:
    runs = {b: [(float(r[2]), float(r[3])) for r in rows if r[0] == case and r[1] == b] for b in "AB"}
    for b in "AB":
        wall = statistics.median(w for w, _ in runs[b]); cpu = statistics.median(c for _, c in runs[b])
        print(f"{case:<10} {b:<3} {wall:7.2f} {cpu:7.2f} {n / wall:10.0f}")
    pairs = [bw / aw for (aw, _), (bw, _) in zip(runs["A"], runs["B"])]
    cpus = [bc / ac for (_, ac), (_, bc) in zip(runs["A"], runs["B"])]
    print(f"{case:<10} B/A wall {statistics.median(pairs):.3f} (pairs {min(pairs):.3f}..{max(pairs):.3f}),"
          f" cpu {statistics.median(cpus):.3f}; rows identical")
PY
