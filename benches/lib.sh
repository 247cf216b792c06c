# Shared by the benchmark scripts (`source "$repo/benches/lib.sh"`).

# bench_pipeline NAME DIR SOURCE [EXTRA]: prints the benchmarks' pipeline: 1-minute windows per
# datasetName (count, two sums and a filtered count) into DIR/out.ndjson, dead letters into
# DIR/dead.ndjson. SOURCE is the source's connector block (further lines indented by four
# spaces, e.g. a `partitioned_by`); EXTRA, top-level YAML appended (a checkpoint, serve).
bench_pipeline() {
  local name=$1 dir=$2 source=$3 extra=${4:-}
  cat <<YAML
name: $name
sources:
  events:
    $source
    format: json
    schema: data-ingestion
    event_time: { field: timestamp, max_out_of_orderness: 5s }
windows:
  per_dataset_1m:
    from: events
    key: [datasetName]
    tumbling: 1m
    aggregates: { count: count(*), records: sum(recordCount), bytes: sum(sizeBytes), failures: "count(*) FILTER (WHERE status = 'FAILURE')" }
    sinks: [out]
sinks:
  out: { file: { path: $dir/out.ndjson } }
dead_letter: { file: { path: $dir/dead.ndjson } }
$extra
YAML
}

# mock_ready PID OUT ERR: waits until the mock cluster of process PID (benches/src/bin/mock_kafka.rs,
# its stdout in OUT and stderr in ERR) prints `ready`, and sets BROKERS to its bootstrap servers;
# exits with its errors if it ends first.
mock_ready() {
  local pid=$1 out=$2 err=$3
  until grep -q '^ready' "$out" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "mock_kafka exited:" >&2
      cat "$out" "$err" >&2 2>/dev/null || true
      exit 1
    fi
    sleep 0.2
  done
  BROKERS=$(head -1 "$out")
}
