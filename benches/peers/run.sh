#!/usr/bin/env bash
# Runs the peers on one NDJSON input of data-ingestion events and prints one line per peer:
#   peer  wall=  cpu=  events_per_cpu_s=  peak_rss_mib=  rows= sum(count)= dup_keys= sha256[:16]=
# The workload (benches/compare.sh's): per (datasetName, 1-minute event-time tumbling window):
# count, sum(recordCount), sum(sizeBytes), max(sizeBytes), count of status = FAILURE. Output
# CSVs (out_PEER.csv) go to $OUT_DIR.
#   benches/peers/run.sh EVENTS.ndjson [duckdb polars]      (default: both)
# Bundled: duckdb (one thread) and polars (POLARS_MAX_THREADS=1), in the venv of setup.sh.
# Not bundled: bytewax, pathway, flink: named, they are reported as skipped.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
IN=$(realpath "$1"); shift
PEERS=${*:-duckdb polars}
PY=$("$here/setup.sh")
OUT_DIR=${OUT_DIR:-$(mktemp -d)}; mkdir -p "$OUT_DIR"
N=$(wc -l < "$IN")
for p in $PEERS; do
  out="$OUT_DIR/out_$p.csv"
  case $p in
    duckdb) cmd=("$PY" "$here/peer_duckdb.py" "$IN" "$out" 1) ;;
    polars) cmd=(env POLARS_MAX_THREADS=1 "$PY" "$here/peer_polars.py" "$IN" "$out") ;;
    bytewax|pathway|flink|flink-batch)
      echo "$p: not bundled (benches/peers has duckdb and polars), skipped" >&2; continue ;;
    *) echo "unknown peer $p" >&2; exit 2 ;;
  esac
  /usr/bin/time -o "$OUT_DIR/time_$p" -f '%e %U %S %M' "${cmd[@]}" >/dev/null 2>"$OUT_DIR/err_$p" \
    || { echo "$p failed: $(tail -3 "$OUT_DIR/err_$p")" >&2; continue; }
  read -r wall usr sys rss < <(tail -1 "$OUT_DIR/time_$p")
  sum=$(python3 "$here/checksum.py" "$out")
  awk -v p="$p" -v w="$wall" -v u="$usr" -v s="$sys" -v r="$rss" -v n="$N" -v sum="$sum" \
    'BEGIN { c=u+s; printf "%-8s wall=%.2fs cpu=%.2fs events_per_cpu_s=%.0f peak_rss_mib=%.0f  %s\n", p, w, c, n/c, r/1024, sum }'
done
