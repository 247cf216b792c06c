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
# names, never delete); snappy (fetch fails); CreatePartitions and topic auto-creation.
set -euo pipefail

VERSION=0.6.0
ROOT="${WEIR_CACHE:-$HOME/.cache/weir}/broker"
BIN="$ROOT/bin/tansu"
RUN="$ROOT/run"
PORT="${WEIR_KAFKA_PORT:-9092}"
PIDFILE="$RUN/tansu-$PORT.pid"
LOG="$RUN/tansu-$PORT.log"

install_broker() {
    if [[ -x "$BIN" ]] && "$BIN" --version 2>/dev/null | grep -q "$VERSION"; then
        return 0
    fi
    echo "kafka.sh: building tansu $VERSION into $ROOT (about 27 minutes on 2 cores, once)" >&2
    mkdir -p "$ROOT"
    CARGO_TARGET_DIR="$ROOT/target" cargo install tansu --version "$VERSION" --locked \
        --features libsql,dynostore --root "$ROOT"
    rm -rf "$ROOT/target"
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
