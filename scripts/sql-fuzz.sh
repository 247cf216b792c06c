#!/usr/bin/env bash
# The long run of the SQL fuzzer and hostile suite (cli/tests/sql_hostile.rs): fuzzes a live
# `weir run` over HTTP and psql for SECS seconds (default 3600), then runs the hostile suite and
# checks the run's windows against the same pipeline run without queries.
#   scripts/sql-fuzz.sh [SECS] [SEED]
# CI runs the same test for 15 s. A failing seed is printed; pass it as SEED to replay it.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}
export WEIR_SQL_FUZZ_SECS=${1:-3600}
if [[ -n "${2:-}" ]]; then
    export WEIR_SQL_FUZZ_SEED=$2
fi
exec cargo test --release -p weir-cli --locked --test sql_hostile -- --nocapture
