#!/usr/bin/env bash
# A local Kafka-protocol broker (tansu 0.6.0) for tests, benchmarks and the README's set-up.
#
#   scripts/kafka.sh install   build the broker once into ~/.cache/weir/broker (about 27 min cold)
#   scripts/kafka.sh start     start it on 127.0.0.1:${WEIR_KAFKA_PORT:-9092} (installs first if needed)
#   scripts/kafka.sh stop      stop it and wait for the process to exit
#   scripts/kafka.sh status    exit 0 when it answers on its port
#   scripts/kafka.sh reset     stop it and delete its data (every topic)
#
# State lives in ~/.cache/weir/broker/run (SQLite storage, log, pid). What tansu 0.6.0 lacks, so
# tests are designed around it: transactions (EndTxn unsupported); offsets-for-times past the last
# message (returns 0); an idempotent producer connected across a broker restart panics its storage
# task (create new producers after a restart); deleting one topic deletes every topic (use unique
# names, never delete); snappy (fetch fails); CreatePartitions and topic auto-creation. What it
# gets wrong and weir patches (scripts/tansu/): a group whose leader leaves while it re-forms waits
# for that leader forever, and no member is ever assigned a partition again; a member that
# rejoins during a rebalance (and so sends no heartbeat) is expired while it is alive; a leader
# whose session expires (killed, never left) stays the leader, so no member is ever assigned
# its partitions.
set -euo pipefail

VERSION=0.6.0
ROOT="${WEIR_CACHE:-$HOME/.cache/weir}/broker"
BIN="$ROOT/bin/tansu"
RUN="$ROOT/run"
PORT="${WEIR_KAFKA_PORT:-9092}"
PIDFILE="$RUN/tansu-$PORT.pid"
LOG="$RUN/tansu-$PORT.log"

# The patches weir applies to tansu's sources (scripts/tansu/*.patch): bugs that break consumer
# groups, fixed here until a tansu release that builds on stable Rust carries the fix. A binary
# built from other patches (or none) is built again: its stamp names the patches' hash.
PATCHES="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/tansu"
# crates.io checksum of tansu 0.6.0's crate (the other crates are checked against its Cargo.lock)
TANSU_SHA256=4fdd85473ec265140488cf8d55e82b844f5c051c8916fabdd4a71156ac053f6d

patches_hash() {
    cat "$PATCHES"/*.patch | sha256sum | cut -d' ' -f1
}

# Downloads crate $1 version $2 from crates.io into directory $3, checking its sha256 ($4).
fetch_crate() {
    local name=$1 version=$2 into=$3 sha=$4 file
    file="$into/$name-$version.crate"
    curl -sSfL --retry 3 -o "$file" "https://static.crates.io/crates/$name/$name-$version.crate"
    if [[ "$(sha256sum "$file" | cut -d' ' -f1)" != "$sha" ]]; then
        echo "kafka.sh: $name $version: checksum mismatch (expected $sha)" >&2
        exit 1
    fi
    tar xzf "$file" -C "$into"
}

install_broker() {
    local stamp="$BIN.patches"
    if [[ -x "$BIN" ]] && "$BIN" --version 2>/dev/null | grep -q "$VERSION" &&
        [[ "$(cat "$stamp" 2>/dev/null)" == "$(patches_hash)" ]]; then
        return 0
    fi
    echo "kafka.sh: building tansu $VERSION, patched ($PATCHES), into $ROOT (about 27 minutes on 2 cores, once)" >&2
    local src="$ROOT/src"
    rm -rf "$src"
    mkdir -p "$src"
    fetch_crate tansu "$VERSION" "$src" "$TANSU_SHA256"
    local lock="$src/tansu-$VERSION/Cargo.lock" broker_sha
    broker_sha="$(grep -A3 '^name = "tansu-broker"$' "$lock" | sed -n 's/^checksum = "\(.*\)"$/\1/p')"
    fetch_crate tansu-broker "$VERSION" "$src" "$broker_sha"
    for p in "$PATCHES"/*.patch; do
        patch -s -p1 -d "$src/tansu-broker-$VERSION" <"$p"
    done
    # the patched crate replaces crates.io's; its lock entry is a path now (no source, no checksum)
    printf '\n[patch.crates-io]\ntansu-broker = { path = "../tansu-broker-%s" }\n' "$VERSION" \
        >>"$src/tansu-$VERSION/Cargo.toml"
    python3 - "$lock" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
entry = re.compile(r'(\[\[package\]\]\nname = "tansu-broker"\nversion = "[^"]+"\n)source = "[^"]+"\nchecksum = "[^"]+"\n')
text, n = entry.subn(r'\1', text)
assert n == 1, "tansu-broker's entry not found in Cargo.lock"
open(path, "w").write(text)
PY
    mkdir -p "$ROOT"
    CARGO_TARGET_DIR="$ROOT/target" cargo install --path "$src/tansu-$VERSION" --locked --force \
        --features libsql,dynostore --root "$ROOT"
    patches_hash >"$stamp"
    rm -rf "$ROOT/target" "$src"
}

listening() {
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null
}

start_broker() {
    install_broker
    mkdir -p "$RUN"
    if [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
        echo "kafka.sh: broker already running (pid $(cat "$PIDFILE")) on 127.0.0.1:$PORT" >&2
        return 0
    fi
    if listening; then
        echo "kafka.sh: port $PORT is taken by another process; set WEIR_KAFKA_PORT" >&2
        exit 1
    fi
    # the SQLite path is relative to the working directory; $! must be the broker itself
    cd "$RUN"
    nohup "$BIN" broker \
        --listener-url "tcp://127.0.0.1:$PORT" \
        --advertised-listener-url "tcp://127.0.0.1:$PORT" \
        --storage-engine "sqlite://tansu-$PORT.db" >"$LOG" 2>&1 &
    echo $! >"$PIDFILE"
    cd - >/dev/null
    for _ in $(seq 1 100); do
        if listening; then
            echo "kafka.sh: broker up on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"), log $LOG)" >&2
            return 0
        fi
        sleep 0.1
    done
    echo "kafka.sh: broker did not start; last lines of $LOG:" >&2
    tail -20 "$LOG" >&2 || true
    exit 1
}

stop_broker() {
    if [[ ! -f "$PIDFILE" ]]; then
        return 0
    fi
    local pid
    pid="$(cat "$PIDFILE")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 150); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "kafka.sh: broker did not stop in 15 s; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
            while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
        fi
    fi
    rm -f "$PIDFILE"
    if grep -q panicked "$LOG" 2>/dev/null; then
        echo "kafka.sh: the broker panicked while running; see $LOG" >&2
        grep -m3 panicked "$LOG" >&2
        return 3
    fi
}

case "${1:-}" in
    install) install_broker ;;
    start) start_broker ;;
    stop) stop_broker ;;
    status) listening ;;
    reset) stop_broker || true; rm -f "$RUN/tansu-$PORT.db" "$RUN/tansu-$PORT.db-shm" "$RUN/tansu-$PORT.db-wal" ;;
    *) echo "usage: scripts/kafka.sh install|start|stop|status|reset" >&2; exit 2 ;;
esac
