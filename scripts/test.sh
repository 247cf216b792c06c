#!/usr/bin/env bash
# The test command of the README: prepares what the end-to-end tests need (the local Kafka
# broker and a Python venv with independent clients, see scripts/test-env.sh), runs every
# test of the workspace, and stops the broker again if this script started it.
#   scripts/test.sh [cargo test args...]
# Set KAFKA_BROKERS to run the Kafka tests against another cluster instead (no local broker).
#
# With the local broker (tansu 0.6.0), each test binary that uses it starts from a fresh
# broker: tansu slows down as its SQLite store grows and, loaded long enough, can lose its
# group coordinator (a panic in its storage task; consumers then never get partitions), which
# would turn into a hang rather than a failure of the test that met it.
#
# A broker already running is kept (a developer's own), unless WEIR_TEST_FRESH_BROKER is set
# (CI sets it): then it is stopped, and every test binary gets a fresh one.
#
# Each test binary of the weir binary runs under `timeout` (WEIR_TEST_TIMEOUT seconds, default
# 1200): a test that hangs fails as itself, with the binary named, and the rest still run.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}
status=0
limit=${WEIR_TEST_TIMEOUT:-1200}
# runs one cargo test command under the time limit; a timeout is reported and counts as failure
bounded() {
    local rc=0
    timeout --kill-after=30 "$limit" "$@" || rc=$?
    if [[ $rc == 124 || $rc == 137 ]]; then
        echo "test.sh: TIMED OUT after ${limit}s (WEIR_TEST_TIMEOUT): $*" >&2
    fi
    return $rc
}
if [[ -n "${KAFKA_BROKERS:-}" ]]; then
    SKIP_BROKER=1 scripts/test-env.sh
    cargo test --workspace --locked --no-fail-fast "$@" || status=$?
    exit $status
fi

SKIP_BROKER=1 scripts/test-env.sh
running_before=0
if scripts/kafka.sh status; then
    if [[ -n "${WEIR_TEST_FRESH_BROKER:-}" ]]; then
        # CI: a broker found running was left by an interrupted run, aged and loaded; the
        # tests get fresh ones like on a clean machine
        echo "test.sh: stopping the broker found running (WEIR_TEST_FRESH_BROKER)" >&2
        scripts/kafka.sh stop
        if scripts/kafka.sh status; then
            echo "test.sh: a broker this script did not start still listens on the port; stop it" >&2
            exit 1
        fi
    else
        running_before=1
    fi
fi
fresh_broker() {
    if [[ $running_before == 0 ]]; then
        scripts/kafka.sh stop >/dev/null 2>&1 || true
        scripts/kafka.sh reset
        scripts/kafka.sh start
    fi
}

# test binaries of the weir binary that use the shared broker (they call `brokers()`)
broker_tests=()
other_tests=()
for f in cli/tests/*.rs; do
    t=$(basename "$f" .rs)
    if grep -qE '(^|[^.a-z_])brokers\(\)' "$f"; then
        broker_tests+=("$t")
    else
        other_tests+=("$t")
    fi
done

cargo test --workspace --locked --no-run -q
fresh_broker
# every crate but the binary's end-to-end tests, then those without the broker
bounded cargo test --workspace --locked --exclude weir-cli --no-fail-fast "$@" || status=$?
bounded cargo test -p weir-cli --locked --bins --no-fail-fast "$@" || status=$?
for t in "${other_tests[@]}"; do
    bounded cargo test -p weir-cli --locked --test "$t" --no-fail-fast "$@" || status=$?
done
# one test at a time: they share one broker, and the consumer-group test's allowance for
# duplicates (at-least-once hand-overs) is about timing that parallel tests disturb
for t in "${broker_tests[@]}"; do
    fresh_broker
    RUST_TEST_THREADS=1 bounded cargo test -p weir-cli --locked --test "$t" "$@" || status=$?
done
if [[ $running_before == 0 ]]; then
    scripts/kafka.sh stop || status=$?
fi
exit $status
