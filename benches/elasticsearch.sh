#!/usr/bin/env bash
# Elasticsearch sink benchmark: the 2,000,000-event benchmark's pipeline (1-minute windows per
# dataset, checkpoints every 250 ms: every row acknowledged at each barrier) writing its
# windows into the Elasticsearch-compatible test server (tests/es/es_server.py, one Python
# process), for several bulk sizes and requests in flight, and to the NDJSON file sink in the
# same run as the reference.
#   benches/elasticsearch.sh [EVENTS] [CONFIGS]   (default: 2000000 "500x1 1000x1 1000x2 5000x2 5000x4")
# CONFIGS: bulk_max_docs x max_in_flight. Prints per configuration: the documents indexed per
# second between the first bulk request and the last answer (the sink's throughput: windows
# come faster than the server takes them when it is the bottleneck), the documents per second
# of the server's own bulk handling time (its capacity), the bulk requests and bytes it
# received, and the run's CPU and wall time against the NDJSON sink's (same events, same
# windows).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-2000000}
CONFIGS=${2:-"500x1 1000x1 1000x2 5000x2 5000x4"}
cache=${WEIR_CACHE:-$HOME/.cache/weir}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
WEIR=${WEIR_BIN:-$CARGO_TARGET_DIR/release/weir}
if [ -z "${WEIR_BIN:-}" ]; then
  (cd "$repo" && cargo build --release -q -p weir-cli)
fi
events=$("$repo/benches/events.sh" "$N" "$WEIR")
work=$(mktemp -d)
server_pid=
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 "$repo/tests/es/es_server.py" "$port" --refresh-interval 30 --ready-file "$work/ready" &
server_pid=$!
while [ ! -f "$work/ready" ]; do sleep 0.1; done

pipeline() { # sink-yaml
  cat <<YAML
name: bench
sources:
  events:
    file: { path: $events }
    format: json
    schema: data-ingestion
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
  out: $1
dead_letter: { file: { path: "\${BENCH_OUT}/dead_letter.ndjson" } }
checkpoint: { dir: "\${BENCH_OUT}/state", interval: 250ms }
YAML
}
stat() { curl -s "http://127.0.0.1:$port/_weir/stats"; }

run() { # name yaml
  local out="$work/$1"; mkdir -p "$out"
  curl -s -XPUT "http://127.0.0.1:$port/_weir/stats/reset" > /dev/null
  BENCH_OUT="$out" RUST_LOG=warn /usr/bin/time -o "$out/time" -f '%e %U %S %M' \
    "$WEIR" run "$2" > "$out/summary" 2> "$out/log"
  read -r wall usr sys rss < <(tail -1 "$out/time")
  rows=$(sed -n 's/^  sink out: \([0-9]*\) rows.*/\1/p' "$out/summary")
  stat > "$out/stats"
  python3 - "$1" "$wall" "$usr" "$sys" "$rss" "$rows" "$out/stats" <<'PY' | tee -a "$work/report"
import json, sys
name, wall, usr, sys_, rss, rows, stats = sys.argv[1:]
wall, cpu, rss, rows = float(wall), float(usr) + float(sys_), int(rss), int(rows)
s = json.load(open(stats))
if s["bulk_requests"]:
    span = s["last_bulk_at"] - s["first_bulk_at"]
    print(f"{name:<14} wall={wall:6.2f}s cpu={cpu:6.2f}s rows={rows} docs/s(first bulk..last answer)={s['items'] / span:8.0f} "
          f"docs/s(server busy)={s['items'] / s['bulk_seconds']:8.0f} bulk_requests={s['bulk_requests']} "
          f"body={s['bytes'] / 1048576:.1f} MiB (gzip) peak_rss={rss / 1024:.0f} MiB")
else:
    print(f"{name:<14} wall={wall:6.2f}s cpu={cpu:6.2f}s rows={rows} peak_rss={rss / 1024:.0f} MiB")
PY
  echo "$1 $wall $usr $sys" >> "$work/walls"
}

pipeline '{ file: { path: "${BENCH_OUT}/weir.ndjson" } }' > "$work/ndjson.yaml"
run ndjson "$work/ndjson.yaml"
for c in $CONFIGS; do
  docs=${c%x*}; flight=${c#*x}
  pipeline "{ elasticsearch: { url: \"http://127.0.0.1:$port\", index: \"bench-$docs-$flight-{output}\", bulk_max_docs: $docs, max_in_flight: $flight } }" > "$work/es-$c.yaml"
  run "es-$c" "$work/es-$c.yaml"
done
echo
nd=$(awk '$1 == "ndjson" { print $2, $3 + $4 }' "$work/walls")
awk -v ndw="${nd% *}" -v ndc="${nd#* }" '$1 != "ndjson" { printf "%-14s wall %.2fs = %.2fx the NDJSON sink'"'"'s %.2fs; weir CPU %.2fs = %.2fx\n", $1, $2, $2 / ndw, ndw, $3 + $4, ($3 + $4) / ndc }' "$work/walls"
curl -s "http://127.0.0.1:$port/_weir/stats" | python3 -c 'import json,sys; d=json.load(sys.stdin)["documents"]; print("documents per index:", d)'
