#!/usr/bin/env bash
# Runs the decoders' (JSON, CloudEvents, Avro) and the pipeline loader's fuzz harnesses for a long time: rounds of
# WEIR_FUZZ_CASES cases (default 200,000 decoder / 5,000 loader cases), each with a fresh
# seed, until HOURS (default 4) have passed or a round fails. A failure prints its seed
# (WEIR_FUZZ_SEED=... repeats it) and its input: add that input to the test's REGRESSIONS.
#   scripts/fuzz.sh [HOURS]
set -euo pipefail
cd "$(dirname "$0")/.."
hours=${1:-4}
end=$(( $(date +%s) + hours * 3600 ))
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}
cargo test --release -p weir-formats --test fuzz_decoders --no-run
cargo test --release -p weir-formats --test fuzz_avro --no-run
cargo test --release -p weir-pipelines --test fuzz_loader --no-run
round=0
while [ "$(date +%s)" -lt "$end" ]; do
  round=$((round + 1))
  seed=$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')
  echo "round $round, seed $seed"
  WEIR_FUZZ_SEED=$seed WEIR_FUZZ_CASES=${DECODER_CASES:-200000} \
    cargo test --release -q -p weir-formats --test fuzz_decoders
  WEIR_FUZZ_SEED=$seed WEIR_FUZZ_CASES=${AVRO_CASES:-2000000} \
    cargo test --release -q -p weir-formats --test fuzz_avro
  WEIR_FUZZ_SEED=$seed WEIR_FUZZ_CASES=${LOADER_CASES:-5000} \
    cargo test --release -q -p weir-pipelines --test fuzz_loader
done
echo "no failure in $round rounds"
