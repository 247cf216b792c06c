#!/usr/bin/env bash
# Replay benchmark: EVENTS data-ingestion events (message timestamps = event times) in a
# 3-partition topic of the local broker; the live pipeline (`weir run --until-caught-up`,
# 1-minute windows per dataset to an NDJSON file, checkpoints every 10 s) and `weir replay`
# of the whole time range read the same messages, alternating, RUNS times each, in the same
# run. Prints the median events per second of each and the ratio replay / live (the bar:
# at least 0.90), and checks that the replay's file equals the live run's.
#   benches/replay.sh [EVENTS] [RUNS]        (default: 2000000 3; the broker: scripts/kafka.sh start)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-2000000}
RUNS=${2:-3}
cache=${WEIR_CACHE:-$HOME/.cache/weir}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
WEIR=${WEIR_BIN:-$CARGO_TARGET_DIR/release/weir}
if [ -z "${WEIR_BIN:-}" ]; then
  (cd "$repo" && cargo build --release -q -p weir-cli)
fi
PY=${WEIR_TEST_PYTHON:-$cache/venv/bin/python}
BROKERS=${KAFKA_BROKERS:-127.0.0.1:9092}
events=$("$repo/benches/events.sh" "$N" "$WEIR")
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
topic="bench-replay-$$-$(date +%s)"
"$PY" "$repo/tests/kafka/kafka_tool.py" create "$BROKERS" "$topic" 3
echo "producing $N events to $topic (timestamps = event times)" >&2
"$PY" "$repo/tests/kafka/kafka_tool.py" produce "$BROKERS" "$topic" "$events" --timestamp-field timestamp
first=$(head -1 "$events" | sed -n 's/.*"timestamp":\([0-9]*\).*/\1/p')
last=$(tail -1 "$events" | sed -n 's/.*"timestamp":\([0-9]*\).*/\1/p')
from=$(( first / 60000 * 60000 - 3600000 ))
to=$(( last + 3600000 ))
: > "$work/results"
for run in $(seq 1 "$RUNS"); do
  for mode in live replay; do
    out="$work/$mode-$run"; mkdir -p "$out"
    cat > "$out/p.yaml" <<YAML
name: bench-replay
sources:
  events:
    kafka: { brokers: "$BROKERS", topic: $topic, group_id: bench-live-$run-$$, start_from: earliest }
    format: json
    schema: data-ingestion
    partitioned_by: [datasetName]
    event_time: { field: timestamp, max_out_of_orderness: 5s }
windows:
  per_dataset_1m:
    from: events
    key: [datasetName]
    tumbling: 1m
    aggregates:
      count: count(*)
      sum_recordCount: sum(recordCount)
      sum_sizeBytes: sum(sizeBytes)
      max_sizeBytes: max(sizeBytes)
      failure_count: count(*) FILTER (WHERE status = 'FAILURE')
    sinks: [out]
sinks:
  out: { file: { path: out.ndjson } }
dead_letter: { file: { path: dead_letter.ndjson } }
checkpoint: { dir: state, interval: 10s }
YAML
    if [ "$mode" = live ]; then
      args=(run "$out/p.yaml" --until-caught-up)
    else
      args=(replay "$out/p.yaml" --from "$from" --to "$to")
    fi
    RUST_LOG=warn /usr/bin/time -o "$out/time" -f '%e %U %S %M' "$WEIR" "${args[@]}" > "$out/summary"
    read -r wall usr sys rss < <(tail -1 "$out/time")
    echo "$mode $wall $usr $sys $rss" >> "$work/results"
    awk -v m="$mode" -v w="$wall" -v u="$usr" -v y="$sys" -v r="$rss" -v n="$N" \
      'BEGIN { printf "run %d %-7s wall=%.2fs cpu=%.2fs events/s=%.0f events/cpu-s=%.0f peak_rss=%.0f MiB\n", '"$run"', m, w, u+y, n/w, n/(u+y), r/1024 }'
  done
done
cmp -s "$work/live-1/out.ndjson" "$work/replay-1/out.replay-"*.ndjson \
  && echo "the replay's windows equal the live run's" \
  || { echo "the replay's windows differ from the live run's" >&2; exit 1; }
awk -v n="$N" '
  function median(a, k,   i, j, t) { for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t } return a[int((k + 1) / 2)] }
  { if ($1 == "live") live[++a] = n / $2; else rep[++b] = n / $2 }
  END { ml = median(live, a); mr = median(rep, b); printf "median events per second: live %.0f, replay %.0f; replay / live = %.3f (bar: >= 0.90)\n", ml, mr, mr / ml }' "$work/results"
