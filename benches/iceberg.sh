#!/usr/bin/env bash
# Iceberg sink benchmark: the 2,000,000-event benchmark's pipeline (1-minute windows per
# dataset, checkpoints every 250 ms, exactly-once sinks: several commits per run) writing its
# windows to an Iceberg table (SQLite catalog, local warehouse) vs to the NDJSON file sink, in
# the same run, alternating, RUNS times each.
#   benches/iceberg.sh [EVENTS] [RUNS]        (default: 2000000 3)
# Prints per sink the median events per CPU-second, rows written per second and peak RSS,
# the ratio Iceberg / NDJSON (the bar: at least 0.90), the Iceberg snapshots' commit latency
# (from the sink's debug log), and checks that both sinks hold the same rows (DuckDB).
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
[ -x "$PY" ] || { echo "$PY is missing: run scripts/test-env.sh" >&2; exit 1; }
events=$("$repo/benches/events.sh" "$N" "$WEIR")
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
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
pipeline '{ file: { path: "${BENCH_OUT}/weir.ndjson" } }' > "$work/ndjson.yaml"
pipeline '{ iceberg: { catalog: "sqlite://${BENCH_OUT}/lake/catalog.db", warehouse: "${BENCH_OUT}/lake", table: bench.per_dataset_1m } }' > "$work/iceberg.yaml"

: > "$work/results"
for run in $(seq 1 "$RUNS"); do
  for sink in ndjson iceberg; do
    out="$work/$sink-$run"; mkdir -p "$out"
    BENCH_OUT="$out" RUST_LOG=warn,weir_iceberg=debug /usr/bin/time -o "$out/time" -f '%e %U %S %M' \
      "$WEIR" run "$work/$sink.yaml" > "$out/summary" 2> "$out/log"
    read -r wall usr sys rss < <(tail -1 "$out/time")
    rows=$(sed -n 's/^  sink out: \([0-9]*\) rows.*/\1/p' "$out/summary")
    echo "$sink $wall $usr $sys $rss $rows" >> "$work/results"
    awk -v s="$sink" -v w="$wall" -v u="$usr" -v y="$sys" -v r="$rss" -v n="$N" -v rows="$rows" \
      'BEGIN { printf "run %d %-8s wall=%.2fs cpu=%.2fs events/cpu-s=%.0f rows=%d rows/s=%.0f peak_rss=%.0f MiB\n", '"$run"', s, w, u+y, n/(u+y), rows, rows/w, r/1024 }'
  done
done

echo
awk -v n="$N" '
  function median(a, k,   i, j, t) { for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t } return a[int((k + 1) / 2)] }
  { e = n / ($3 + $4); if ($1 == "ndjson") { nd[++a] = e; ndr[a] = $6 / $2; ndm[a] = $5 } else { ic[++b] = e; icr[b] = $6 / $2; icm[b] = $5 } }
  END {
    me = median(nd, a); mi = median(ic, b)
    printf "median events per CPU-second: ndjson %.0f, iceberg %.0f; iceberg / ndjson = %.3f (bar: >= 0.90)\n", me, mi, mi / me
    printf "median rows written per second: ndjson %.0f, iceberg %.0f\n", median(ndr, a), median(icr, b)
    printf "median peak RSS: ndjson %.0f MiB, iceberg %.0f MiB\n", median(ndm, a) / 1024, median(icm, b) / 1024
  }' "$work/results"

# snapshot commit latency, from the sink's "committed Iceberg snapshot ... ms=N" lines
grep -h 'committed Iceberg snapshot' "$work"/iceberg-*/log | sed -n 's/.*ms=\([0-9]*\).*/\1/p' | sort -n > "$work/commit_ms"
awk '{ a[NR] = $1 } END { if (NR) { p90 = int(NR * 0.9 + 0.5); if (p90 < 1) p90 = 1; printf "Iceberg snapshot commits: %d, latency p50 %d ms, p90 %d ms, max %d ms\n", NR, a[int((NR + 1) / 2)], a[p90], a[NR] } }' "$work/commit_ms"

# both sinks hold the same rows
"$PY" - "$work/ndjson-1/weir.ndjson" "$work/iceberg-1/lake" <<'PY'
import sys, duckdb
from pyiceberg.catalog.sql import SqlCatalog
nd, lake = sys.argv[1], sys.argv[2]
t = SqlCatalog("weir", uri=f"sqlite:///{lake}/catalog.db", warehouse=f"file://{lake}").load_table("bench.per_dataset_1m")
files = [f.file.file_path.removeprefix("file://") for f in t.scan().plan_files()]
con = duckdb.connect()
cols = "datasetName, epoch_ms(window_start::TIMESTAMP) AS ws, count, sum_recordCount, sum_sizeBytes, max_sizeBytes, failure_count"
a = con.execute(f"SELECT {cols} FROM read_parquet(?) ORDER BY ALL", [files]).fetchall()
b = con.execute(f"SELECT {cols} FROM read_json_auto(?) ORDER BY ALL", [nd]).fetchall()
print(f"rows: iceberg {len(a)}, ndjson {len(b)}; " + ("identical" if a == b else "DIFFERENT"))
sys.exit(0 if a == b else 1)
PY
