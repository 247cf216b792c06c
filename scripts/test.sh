#!/usr/bin/env bash
# The test command of the README: prepares what the end-to-end tests need (the local Kafka
# broker and a Python venv with independent clients, see scripts/test-env.sh), runs every
# test of the workspace, and stops the broker again if this script started it.
#   scripts/test.sh [cargo test args...]
# Set KAFKA_BROKERS to run the Kafka tests against another cluster instead (no local broker).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}
started=0
if [[ -z "${KAFKA_BROKERS:-}" ]]; then
    if ! scripts/kafka.sh status; then
        started=1
        # a fresh store: tansu's SQLite storage slows down as it grows, and every test
        # makes its own topics
        scripts/kafka.sh reset
    fi
    scripts/test-env.sh
else
    SKIP_BROKER=1 scripts/test-env.sh
fi
status=0
cargo test --workspace --locked "$@" || status=$?
if [[ $started == 1 ]]; then
    scripts/kafka.sh stop || status=$?
fi
exit $status
