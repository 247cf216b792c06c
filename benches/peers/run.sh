#!/usr/bin/env bash
# Runs the peers on one NDJSON input of data-ingestion events and prints one line per peer:
#   peer  wall=  cpu=  events_per_cpu_s=  peak_rss_mib=  rows= sum(count)= dup_keys= sha256[:16]=
# The workload (benches/compare.sh's): per (datasetName, 1-minute event-time tumbling window):
# count, sum(recordCount), sum(sizeBytes), max(sizeBytes), count of status = FAILURE. Output
# CSVs (out_PEER.csv) go to $OUT_DIR.
#   benches/peers/run.sh EVENTS.ndjson [duckdb polars flink]      (default: duckdb polars)
# Bundled: duckdb (one thread), polars (POLARS_MAX_THREADS=1) and flink (PyFlink, Flink SQL in
# streaming mode with a 5 s watermark, parallelism FLINK_PARALLELISM, default 1; installed into
# the same venv by `setup.sh flink` when first asked for). Flink is measured twice: over the
# first 1,000 events (`flink-startup`: the JVM, the mini-cluster and the job's start and end) and
# over the whole input (`flink`); `flink-run` is the whole run less that start-up. Its phase
# breakdown (peer_flink.py's stderr) follows as an indented line.
# Not bundled: bytewax, pathway: named, they are reported as skipped.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
IN=$(realpath "$1"); shift
PEERS=${*:-duckdb polars}
PY=$("$here/setup.sh")
OUT_DIR=${OUT_DIR:-$(mktemp -d)}; mkdir -p "$OUT_DIR"
N=$(wc -l < "$IN")
case " $PEERS " in *" flink "*) PY=$("$here/setup.sh" flink) ;; esac
measure() { # name events out command...: runs it under /usr/bin/time and prints its line
  local p=$1 n=$2 out=$3; shift 3
  /usr/bin/time -o "$OUT_DIR/time_$p" -f '%e %U %S %M' "$@" >/dev/null 2>"$OUT_DIR/err_$p" \
    || { echo "$p failed: $(tail -3 "$OUT_DIR/err_$p")" >&2; return 1; }
  read -r wall usr sys rss < <(tail -1 "$OUT_DIR/time_$p")
  line "$p" "$n" "$wall" "$(awk -v u="$usr" -v s="$sys" 'BEGIN { print u + s }')" "$rss" \
    "$(python3 "$here/checksum.py" "$out")"
}
line() { # name events wall cpu rss_kb note
  awk -v p="$1" -v n="$2" -v w="$3" -v c="$4" -v r="$5" -v note="$6" \
    'BEGIN { printf "%-8s wall=%.2fs cpu=%.2fs events_per_cpu_s=%.0f peak_rss_mib=%.0f  %s\n", p, w, c, n/c, r/1024, note }'
}
cpu() { tail -1 "$OUT_DIR/time_$1" | awk '{ print $2 + $3 }'; }
wall() { tail -1 "$OUT_DIR/time_$1" | awk '{ print $1 }'; }
for p in $PEERS; do
  out="$OUT_DIR/out_$p.csv"
  case $p in
    duckdb) measure duckdb "$N" "$out" "$PY" "$here/peer_duckdb.py" "$IN" "$out" 1 || true ;;
    polars) measure polars "$N" "$out" env POLARS_MAX_THREADS=1 "$PY" "$here/peer_polars.py" "$IN" "$out" || true ;;
    flink)
      par=${FLINK_PARALLELISM:-1} tiny="$OUT_DIR/in_flink_startup.ndjson"
      head -n 1000 "$IN" > "$tiny"
      measure flink-startup 1000 "$OUT_DIR/out_flink_startup.csv" \
        "$PY" "$here/peer_flink.py" "$tiny" "$OUT_DIR/out_flink_startup.csv" "$par" > "$OUT_DIR/flink_startup.txt" \
        || continue
      measure flink "$N" "$out" "$PY" "$here/peer_flink.py" "$IN" "$out" "$par" || continue
      echo "  $(tail -1 "$OUT_DIR/err_flink")"
      rss=$(tail -1 "$OUT_DIR/time_flink" | awk '{ print $4 }') start=$(cpu flink-startup)
      line flink-run "$N" "$(awk -v a="$(wall flink)" -v b="$(wall flink-startup)" 'BEGIN { print a - b }')" \
        "$(awk -v a="$(cpu flink)" -v b="$start" 'BEGIN { print a - b }')" "$rss" \
        "flink less its start-up ($start CPU-s, $(wall flink-startup) s: the same job over the first 1,000 events)"
      cat "$OUT_DIR/flink_startup.txt"
      echo "  $(tail -1 "$OUT_DIR/err_flink-startup")" ;;
    bytewax|pathway|flink-batch)
      echo "$p: not bundled (benches/peers has duckdb, polars and flink), skipped" >&2; continue ;;
    *) echo "unknown peer $p" >&2; exit 2 ;;
  esac
done
