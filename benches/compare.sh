#!/usr/bin/env bash
# End-to-end benchmark: weir vs DuckDB, Polars and Flink (benches/peers/run.sh) on the same
# 2,000,000 data-ingestion events (benches/events.sh: `weir generate`, seed 42), measured in the
# same run.
#   benches/compare.sh [EVENTS] [PEERS...]      (default: 2000000 duckdb polars)
#   benches/compare.sh 2000000 duckdb polars flink
# Prints, per engine: wall and CPU seconds, events per CPU-second, peak RSS; weir's ratio to each
# peer; and checks that weir's rows (and Flink's, when run) equal DuckDB's. Needs a release build
# (built if missing), python3 with venv (the peers' venv is made once: benches/peers/setup.sh;
# the flink peer adds PyFlink, about 850 MB, and needs java 11+). Flink is not in the default
# list for that size and its minute of CPU. Bytewax and Pathway peers are not bundled.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-2000000}; shift || true
PEERS=${*:-duckdb polars}
cache=${WEIR_CACHE:-$HOME/.cache/weir}/bench
mkdir -p "$cache"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}
WEIR=${WEIR_BIN:-$CARGO_TARGET_DIR/release/weir}
if [ -z "${WEIR_BIN:-}" ]; then
  (cd "$repo" && cargo build --release -q -p weir-cli)
fi
events=$("$repo/benches/events.sh" "$N" "$WEIR")
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cat > "$work/bench.yaml" <<YAML
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
  out: { file: { path: "\${BENCH_OUT}/weir.ndjson" } }
dead_letter: { file: { path: "\${BENCH_OUT}/dead_letter.ndjson" } }
YAML
line() { # name wall user sys rss_kb
  awk -v p="$1" -v w="$2" -v u="$3" -v s="$4" -v r="$5" -v n="$N" \
    'BEGIN { c=u+s; printf "%-10s wall=%.2fs cpu=%.2fs events_per_cpu_s=%.0f peak_rss_mib=%.0f\n", p, w, c, n/c, r/1024 }'
}
results="$work/results"; : > "$results"
for par in 1 2; do
  mkdir -p "$work/p$par"
  BENCH_OUT="$work/p$par" RUST_LOG=warn /usr/bin/time -o "$work/time_p$par" -f '%e %U %S %M' \
    "$WEIR" run "$work/bench.yaml" --parallelism "$par" > "$work/summary_p$par"
  read -r wall usr sys rss < <(tail -1 "$work/time_p$par")
  echo "weir-p$par $wall $usr $sys $rss" >> "$results"
  line "weir-p$par" "$wall" "$usr" "$sys" "$rss"
done
cmp -s "$work/p1/weir.ndjson" "$work/p2/weir.ndjson" && echo "weir parallelism 1 and 2: identical output" \
  || { echo "weir parallelism 1 and 2 differ" >&2; exit 1; }
OUT_DIR="$work/peers" ; mkdir -p "$OUT_DIR"
OUT_DIR="$OUT_DIR" bash "$repo/benches/peers/run.sh" "$events" $PEERS | tee "$work/peers.txt"
if [ -s "$OUT_DIR/out_duckdb.csv" ]; then
  python3 "$repo/benches/peers/same_rows.py" "$OUT_DIR/out_duckdb.csv" "$work/p1/weir.ndjson" --key datasetName \
    && echo "weir's rows equal DuckDB's" || { echo "weir's rows differ from DuckDB's" >&2; exit 1; }
fi
flink_differs=0
if [ -s "$OUT_DIR/out_duckdb.csv" ] && [ -s "$OUT_DIR/out_flink.csv" ]; then
  python3 "$repo/benches/peers/same_rows.py" "$OUT_DIR/out_duckdb.csv" "$OUT_DIR/out_flink.csv" --key datasetName \
    && echo "Flink's rows equal DuckDB's" || { echo "Flink's rows differ from DuckDB's" >&2; flink_differs=1; }
fi
echo
echo "ratios (weir events per CPU-second / peer's; peak RSS weir / peer):"
read -r _ w1 u1 s1 r1 < <(grep '^weir-p1 ' "$results")
read -r _ w2 u2 s2 r2 < <(grep '^weir-p2 ' "$results")
awk -v w1="$w1" -v w2="$w2" 'BEGIN { printf "  parallelism 2 wall-time speed-up over parallelism 1: %.2fx\n", w1/w2 }'
while read -r peer rest; do
  pe=$(sed -n 's/.*events_per_cpu_s=\([0-9]*\).*/\1/p' <<<"$rest"); prss=$(sed -n 's/.*peak_rss_mib=\([0-9]*\).*/\1/p' <<<"$rest")
  [ -n "$pe" ] || continue
  case $peer in *-startup) continue ;; esac
  awk -v p="$peer" -v n="$N" -v u="$u1" -v s="$s1" -v r="$r1" -v pe="$pe" -v prss="$prss" \
    'BEGIN { e=n/(u+s); printf "  vs %-8s events/CPU-s %.2fx   peak RSS %.2fx\n", p, e/pe, (r/1024)/prss }'
done < "$work/peers.txt"
exit $flink_differs
