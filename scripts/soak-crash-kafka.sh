#!/usr/bin/env bash
# The Kafka crash loop restarted with the pipeline's own group (4 SIGKILLs, then a run to the
# end with --until-caught-up) N times in a row (default 20), stopping at the first failure.
# Each iteration is a fresh topic pair, group and state; its output goes to LOGS/N.log. The
# test and weir binaries are built once and copied, so that builds meanwhile change nothing.
#   scripts/soak-crash-kafka.sh [N] [TEST]
# TEST defaults to killed_and_restarted_kafka_runs_are_exactly_once (--parallelism 2); also
# killed_and_restarted_kafka_runs_with_one_worker_are_exactly_once. Environment:
# WEIR_CRASH_KILLS (4), WEIR_SOAK_LOGS (a new folder under /tmp), WEIR_SOAK_RESET_EVERY
# (restart the local broker with an empty database every K iterations: tansu slows as its
# database grows; 0, the default, never does; only with the local broker of scripts/kafka.sh),
# WEIR_SOAK_PREBUILT (a folder holding crash_kafka and weir binaries to use instead of building).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
n=${1:-20}
test=${2:-killed_and_restarted_kafka_runs_are_exactly_once}
export WEIR_CRASH_KILLS=${WEIR_CRASH_KILLS:-4}
reset_every=${WEIR_SOAK_RESET_EVERY:-0}
logs=${WEIR_SOAK_LOGS:-$(mktemp -d /tmp/weir-soak-XXXXXX)}
mkdir -p "$logs"
cd "$here"
if [[ -z "${KAFKA_BROKERS:-}" ]] && ! scripts/kafka.sh status; then
    echo "no broker: start one with scripts/kafka.sh start (or set KAFKA_BROKERS)" >&2
    exit 1
fi
if [[ -n "${WEIR_SOAK_PREBUILT:-}" ]]; then
    # binaries copied from an earlier build (crash_kafka and weir in that folder)
    cp "$WEIR_SOAK_PREBUILT/crash_kafka" "$WEIR_SOAK_PREBUILT/weir" "$logs/"
else
    exe=$(cargo test -p weir-cli --test crash_kafka --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "crash_kafka" and m.get("executable"):
        print(m["executable"])')
    weir=$(dirname "$(dirname "$exe")")/weir
    # (building the test built weir too) a shared CARGO_TARGET_DIR holds one debug/weir for
    # every worktree: copy it at once
    cp "$weir" "$logs/weir"
    cp "$exe" "$logs/crash_kafka"
fi
# the copy must be this tree's build (it knows --caught-up-timeout)
if ! grep -q -a -- "caught-up-timeout" "$logs/weir"; then
    echo "$logs/weir is not this tree's build (another worktree built it meanwhile?); run again" >&2
    exit 1
fi
export WEIR_BIN="$logs/weir"
passed=0
for i in $(seq 1 "$n"); do
    if [[ "$reset_every" -gt 0 && $i -gt 1 && $(( (i - 1) % reset_every )) -eq 0 ]]; then
        scripts/kafka.sh reset && scripts/kafka.sh start
    fi
    started=$(date +%s)
    if (cd "$here/cli" && "$logs/crash_kafka" "$test" --exact --nocapture) >"$logs/$i.log" 2>&1; then
        passed=$((passed + 1))
        echo "iteration $i/$n passed in $(( $(date +%s) - started ))s ($(grep -o 'crash loop seed [0-9]*' "$logs/$i.log" | head -1); $(grep -o 'topic: .*' "$logs/$i.log" | head -1))"
    else
        echo "iteration $i/$n FAILED after $(( $(date +%s) - started ))s: $logs/$i.log" >&2
        echo "$passed of $n passed in a row ($test)" >&2
        exit 1
    fi
done
echo "$passed of $n passed in a row ($test); logs in $logs"
