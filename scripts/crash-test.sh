#!/usr/bin/env bash
# Longer crash loops than CI runs: weir killed with SIGKILL N times (default 100) on the file
# source, and on Kafka when a broker is up (scripts/kafka.sh start).
#   scripts/crash-test.sh [KILLS] [SEED]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export WEIR_CRASH_KILLS=${1:-100}
[[ -n "${2:-}" ]] && export WEIR_CRASH_SEED=$2
cd "$here"
"$here/scripts/test-env.sh"
cargo test -p weir-cli --test crash killed -- --nocapture
cargo test -p weir-cli --test crash_kafka -- --nocapture
