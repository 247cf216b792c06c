#!/usr/bin/env bash
# State at scale (issue 29 item 6): weir's memory per key, checkpoint and restore of a 1-hour
# window and a view (benches/src/bin/state_bench.rs), then DuckDB's hash aggregate over the
# same rows as the reference (benches/peers/state_duckdb.py, 1 and 2 threads).
#   benches/state.sh [KEYS...]      (default: 1000000 10000000)
# Needs a release build of the bench (built if missing) and the peers' venv
# (benches/peers/setup.sh). About 3 GB of memory at 10,000,000 keys.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
KEYS=${*:-1000000 10000000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}
(cd "$repo" && cargo build --release -q -p weir-benches --bin state_bench)
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
# shellcheck disable=SC2086
"$CARGO_TARGET_DIR/release/state_bench" $KEYS
py=$("$repo/benches/peers/setup.sh")
for k in $KEYS; do
  for t in 1 2; do
    "$py" "$repo/benches/peers/state_duckdb.py" "$k" "$t"
  done
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
