#!/usr/bin/env bash
# The benchmarks' input: N data-ingestion events from `weir generate` (seed 42, every setting
# explicit: 1,000 zipf-skewed keys, 1 ms mean step, 20% jittered by up to 2 s, no late or bad
# lines), cached as ~/.cache/weir/bench/events-weir-N.ndjson. Prints the file's path.
#   benches/events.sh N WEIR_BINARY
set -euo pipefail
N=$1 WEIR=$2
dir=${WEIR_CACHE:-$HOME/.cache/weir}/bench
mkdir -p "$dir"
events="$dir/events-weir-$N.ndjson"
if [ ! -s "$events" ]; then
  echo "generating $N events (weir generate, seed 42) -> $events" >&2
  "$WEIR" generate data-ingestion --count "$N" --seed 42 --keys 1000 --skew 1.1 \
    --start-ms 1700000000000 --step-ms 1 --jitter-frac 0.2 --jitter-ms 2000 \
    --late-frac 0 --late-ms 3600000 --bad-frac 0 --out "$events.tmp" 2>/dev/null
  mv "$events.tmp" "$events"
fi
echo "$events"
