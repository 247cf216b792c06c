#!/usr/bin/env bash
# The rebalance pause of a worker pool on a live topic: a producer at a fixed rate, worker a
# running, worker b joining, leaving (SIGTERM), joining again and killed (SIGKILL); the
# pause of the partitions that stayed with their worker and of those that moved, per change
# (see benches/pool_pause.py).
#   benches/pool_pause.sh [RATE] [SETTLE_S]        (default: 3000 events/s, 25 s)
#   KAFKA_BROKERS=host:port   a broker of your own (default: librdkafka's mock cluster,
#                             benches/src/bin/mock_kafka.rs, in a process of its own)
#   PARTITIONS=12  INTERVAL=10s (the checkpoint interval)
#   WEIR_BENCH_NO_BUILD=1     the binaries already in CARGO_TARGET_DIR, not built first
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/lib.sh
source "$repo/benches/lib.sh"
RATE=${1:-3000}
SETTLE=${2:-25}
PARTITIONS=${PARTITIONS:-12}
INTERVAL=${INTERVAL:-10s}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}
[[ -n "${WEIR_BENCH_NO_BUILD:-}" ]] || (cd "$repo" && cargo build --release -q -p weir-cli --bin weir &&
  cargo build --release -q -p weir-benches --bin mock_kafka)
WEIR=$CARGO_TARGET_DIR/release/weir
MOCK=$CARGO_TARGET_DIR/release/mock_kafka
py=${WEIR_VENV:-$HOME/.cache/weir/venv}/bin/python
[[ -x $py ]] || py=python3
work=$(mktemp -d)
mock_pid=""
cleanup() {
  if [[ -n "$mock_pid" ]]; then kill "$mock_pid" 2>/dev/null || true; wait "$mock_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
name="pause$(date +%s)"
topic=events
if [[ -n "${KAFKA_BROKERS:-}" ]]; then
  BROKERS=$KAFKA_BROKERS
  topic="$name-events"
  "$py" - "$BROKERS" "$topic" "$PARTITIONS" <<'PY'
import sys
from confluent_kafka.admin import AdminClient, NewTopic
brokers, topic, partitions = sys.argv[1], sys.argv[2], int(sys.argv[3])
admin = AdminClient({"bootstrap.servers": brokers})
for f in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
    f.result()
PY
else
  : >"$work/empty.ndjson"
  "$MOCK" --partitions "$PARTITIONS" --topic "$topic" --ignore-stdin "$work/empty.ndjson" \
    >"$work/mock.out" 2>"$work/mock.err" &
  mock_pid=$!
  mock_ready "$mock_pid" "$work/mock.out" "$work/mock.err"
fi
bench_pipeline "$name" "$work" \
  "kafka: { brokers: \"$BROKERS\", topic: $topic, group_id: $name, start_from: earliest }
    partitioned_by: [datasetName]" "checkpoint: { dir: $work/state, interval: $INTERVAL }
serve: { http: \"127.0.0.1:\${WEIR_HTTP_PORT}\", refresh: 100ms }" >"$work/p.yaml"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); $RATE events/s, $PARTITIONS partitions, checkpoint interval $INTERVAL, broker ${KAFKA_BROKERS:-mock}"
"$py" "$repo/benches/pool_pause.py" "$WEIR" "$work/p.yaml" "$BROKERS" "$topic" 18461 18462 "$RATE" "$SETTLE"
if [[ -n "${KEEP_LOGS:-}" ]]; then mkdir -p "$KEEP_LOGS" && cp "$work"/*.err "$KEEP_LOGS"/; fi
