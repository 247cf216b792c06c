#!/usr/bin/env bash
# Latency benchmark: a live generator at 100,000 events/s, 1-second tumbling windows per
# dataset (out-of-orderness 100 ms) and a view of every dataset, written in turn to each sink:
# NDJSON file, Kafka, Iceberg (SQLite catalog, local warehouse), Elasticsearch (the project's
# compatible test server). Prints p50/p99 of
#   - weir_window_durable_latency_seconds (the watermark passing a window's end -> its row
#     acknowledged durable by the sink), read from /metrics;
#   - the same measured outside weir where a reader can see rows as they become durable
#     (file: the committed NDJSON file tailed every 2 ms; Kafka: a consumer of the topic),
#     as the time a row is first seen minus (its window_end + the out-of-orderness), i.e. the
#     moment the generator's clock made the watermark pass the window's end;
#   - weir_view_visible_latency_seconds (a row read -> its change visible to SQL in the view).
#
#   benches/latency.sh [SECONDS] [CONFIGS] [SINKS]
#     defaults: 20 "none ckpt-default ckpt-100ms ckpt-after" "file kafka iceberg elasticsearch"
#   CONFIGS: none (no checkpoints: Kafka and Elasticsearch acknowledge at each flush; files
#   and Iceberg are durable only when the run ends, so they are skipped), ckpt-default
#   (checkpoint.interval 10s, serve.refresh 1s), ckpt-100ms (checkpoint.interval 100ms, the
#   smallest allowed, serve.refresh 100ms), ckpt-after (checkpoint.after_windows: true with
#   the default interval, serve.refresh 100ms).
#   RATE=N changes the generator's rate (events/s). WEIR_BIN=path runs that binary.
#   Kafka: a broker of our own, `WEIR_KAFKA_PORT=19495 scripts/kafka.sh start` (started and
#   stopped here when it is not running), or KAFKA_BROKERS=host:port.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
SECONDS_RUN=${1:-20}
CONFIGS=${2:-"none ckpt-default ckpt-100ms ckpt-after"}
SINKS=${3:-"file kafka iceberg elasticsearch"}
OOO_MS=100
RATE=${RATE:-100000} # events per second
cache=${WEIR_CACHE:-$HOME/.cache/weir}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
WEIR=${WEIR_BIN:-$CARGO_TARGET_DIR/release/weir}
if [ -z "${WEIR_BIN:-}" ]; then
  (cd "$repo" && cargo build --release -q -p weir-cli)
fi
PY=${PYTHON:-$cache/venv/bin/python}
work=$(mktemp -d)
es_pid=
kafka_started=
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cleanup() {
  [ -n "$es_pid" ] && kill "$es_pid" 2>/dev/null
  [ -n "$kafka_started" ] && WEIR_KAFKA_PORT=19495 "$repo/scripts/kafka.sh" stop >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

if [[ " $SINKS " == *" elasticsearch "* ]]; then
  es_port=$(free_port)
  python3 "$repo/tests/es/es_server.py" "$es_port" --refresh-interval 30 --ready-file "$work/es-ready" \
    > "$work/es.log" 2>&1 &
  es_pid=$!
  while [ ! -f "$work/es-ready" ]; do sleep 0.1; done
fi
if [[ " $SINKS " == *" kafka "* ]] && [ -z "${KAFKA_BROKERS:-}" ]; then
  if ! WEIR_KAFKA_PORT=19495 "$repo/scripts/kafka.sh" status >/dev/null 2>&1; then
    WEIR_KAFKA_PORT=19495 "$repo/scripts/kafka.sh" start >/dev/null
    kafka_started=1
  fi
  KAFKA_BROKERS=127.0.0.1:19495
fi

sink_yaml() { # sink run-id
  case $1 in
    file) echo "{ file: { path: \"$work/$2/out.ndjson\" } }" ;;
    kafka) echo "{ kafka: { brokers: \"$KAFKA_BROKERS\", topic: latency-$2 } }" ;;
    iceberg) echo "{ iceberg: { catalog: \"sqlite://$work/$2/catalog.db\", warehouse: \"$work/$2/warehouse\", table: bench.windows } }" ;;
    elasticsearch) echo "{ elasticsearch: { url: \"http://127.0.0.1:$es_port\", index: \"latency-$2\" } }" ;;
  esac
}

pipeline() { # sink run-id config http-port
  local checkpoint="" refresh=1s
  case $3 in
    ckpt-default) checkpoint="checkpoint: { dir: \"$work/$2/state\" }" ;;
    ckpt-100ms) checkpoint="checkpoint: { dir: \"$work/$2/state\", interval: 100ms }"; refresh=100ms ;;
    ckpt-after) checkpoint="checkpoint: { dir: \"$work/$2/state\", after_windows: true }"; refresh=100ms ;;
  esac
  cat <<YAML
name: latency
sources:
  events:
    generator: { kind: data-ingestion, events_per_second: $RATE, seed: 7 }
    event_time: { field: timestamp, max_out_of_orderness: ${OOO_MS}ms }
windows:
  per_dataset_1s:
    from: events
    key: [datasetName]
    tumbling: 1s
    aggregates: { count: count(*), bytes: sum(sizeBytes) }
    sinks: [out]
views:
  datasets: { from: events, key: [datasetName], aggregates: { events: count(*) } }
sinks:
  out: $(sink_yaml "$1" "$2")
dead_letter: { file: { path: "$work/$2/dead_letter.ndjson" } }
$checkpoint
serve: { http: "127.0.0.1:$4", refresh: $refresh }
YAML
}

# Tails what a reader sees and prints, per row, the seconds from its window's end plus the
# out-of-orderness to the moment it was first seen.
watch_rows() { # sink run-id out-file
  "$PY" - "$1" "$work/$2" "$2" "${KAFKA_BROKERS:-}" "$OOO_MS" > "$3" <<'PY' &
import json, os, sys, time
sink, folder, run, brokers, ooo = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
def emit(end_ms, seen):
    print(f"{seen - (end_ms + ooo) / 1000:.6f}", flush=True)
def window_end(row):
    v = row["window_end"]
    if isinstance(v, (int, float)):
        return int(v)
    from datetime import datetime
    return int(datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp() * 1000)
if sink == "file":
    path, pos, rest = os.path.join(folder, "out.ndjson"), 0, b""
    while True:
        try:
            with open(path, "rb") as f:
                f.seek(pos)
                data = f.read()
        except FileNotFoundError:
            data = b""
        now = time.time()
        if data:
            pos += len(data)
            lines = (rest + data).split(b"\n")
            rest = lines.pop()
            for line in lines:
                if line.strip():
                    emit(window_end(json.loads(line)), now)
        time.sleep(0.002)
elif sink == "kafka":
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": brokers, "group.id": f"latency-{run}",
                  "auto.offset.reset": "earliest", "isolation.level": "read_committed",
                  "fetch.wait.max.ms": 5, "fetch.min.bytes": 1})
    c.subscribe([f"latency-{run}"])
    while True:
        for m in c.consume(1000, 0.05):
            if m.error() is None and m.value():
                emit(window_end(json.loads(m.value())), time.time())
PY
  echo $!
}

# p50 and p99 of a Prometheus histogram family (interpolated within buckets) and its count.
quantiles() { # metrics-file family label
  python3 - "$@" <<'PY'
import re, sys
path, family, label = sys.argv[1:]
buckets = []
for line in open(path):
    m = re.match(rf'{family}_bucket\{{.*{label}.*le="([^"]+)"\}} (\S+)', line)
    if m:
        buckets.append((float(m.group(1)), float(m.group(2))))
total = buckets[-1][1] if buckets else 0
def q(p):
    if not total:
        return float("nan")
    target, lo, below = p * total, 0.0, 0.0
    for bound, n in buckets:
        if n >= target:
            if bound == float("inf"):
                return lo
            return lo + (bound - lo) * (target - below) / max(n - below, 1e-9)
        lo, below = bound, n
    return lo
print(f"p50={q(0.5) * 1000:7.1f} ms p99={q(0.99) * 1000:7.1f} ms n={int(total)}")
PY
}

sample_quantiles() { # file of seconds
  python3 - "$1" <<'PY'
import sys
v = sorted(float(l) for l in open(sys.argv[1]) if l.strip())
if not v:
    print("no rows seen"); sys.exit()
q = lambda p: v[min(len(v) - 1, int(p * len(v)))]
print(f"p50={q(0.5) * 1000:7.1f} ms p99={q(0.99) * 1000:7.1f} ms n={len(v)}")
PY
}

echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); $RATE events/s, $SECONDS_RUN s per run; $WEIR"
for config in $CONFIGS; do
  for sink in $SINKS; do
    if [ "$config" = none ] && { [ "$sink" = file ] || [ "$sink" = iceberg ]; }; then
      continue # durable only at the end of the run without checkpoints
    fi
    run="$sink-$config-$$"
    mkdir -p "$work/$run"
    port=$(free_port)
    pipeline "$sink" "$run" "$config" "$port" > "$work/$run/pipeline.yaml"
    watcher=
    if [ "$sink" = file ] || [ "$sink" = kafka ]; then
      watcher=$(watch_rows "$sink" "$run" "$work/$run/seen")
    fi
    RUST_LOG=warn "$WEIR" run "$work/$run/pipeline.yaml" > "$work/$run/summary" 2> "$work/$run/log" &
    weir_pid=$!
    sleep "$SECONDS_RUN"
    curl -s "http://127.0.0.1:$port/metrics" > "$work/$run/metrics" || true
    kill -INT "$weir_pid"; wait "$weir_pid" || true
    sleep 0.5
    [ -n "$watcher" ] && kill "$watcher" 2>/dev/null
    printf '%-13s %-12s durable (metric):   %s\n' "$sink" "$config" \
      "$(quantiles "$work/$run/metrics" weir_window_durable_latency_seconds 'sink="out"')"
    if [ -n "$watcher" ]; then
      printf '%-13s %-12s durable (reader):   %s\n' "$sink" "$config" "$(sample_quantiles "$work/$run/seen")"
    fi
    printf '%-13s %-12s view visible:       %s\n' "$sink" "$config" \
      "$(quantiles "$work/$run/metrics" weir_view_visible_latency_seconds 'view="datasets"')"
    if [ -n "${KEEP:-}" ]; then cp -r "$work/$run" "$KEEP/"; fi
  done
done
