#!/usr/bin/env bash
# NATS JetStream benchmark: a stream of EVENTS data-ingestion events (published once with
# nats-py into a throwaway nats-server's store), then, alternately and in the same run, a bare
# async-nats pull consumer that only counts messages (benches/src/bin/nats_count.rs) and
# weir's pipeline (decode + 1-minute windows + file sink, `--until-caught-up`, a fresh durable
# consumer each time).
#   benches/nats.sh [EVENTS] [ROUNDS] [PROFILE]     (default: 1000000 3 release)
#   FETCH_BATCH=N: weir's `fetch_batch` (default 1000, as the bare consumer's pulls)
#   CHECKPOINT=DURATION: weir checkpoints at this interval (its acknowledgements then follow
#     each checkpoint; without, the file sink makes rows durable only at the end, so weir
#     acknowledges nothing before: the server's consumer then tracks every message read)
#   ACK_EVERY=N: the bare consumer acknowledges every N messages (default 16384; a number
#     above EVENTS holds every acknowledgement to the end, as weir without CHECKPOINT)
# Prints messages per second of both, weir's ratio to the bare consumer (the bar is 0.8), and
# events per CPU-second of each (user + system time of the process; the server's CPU apart).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/lib.sh
source "$repo/benches/lib.sh"
N=${1:-1000000}
ROUNDS=${2:-3}
PROFILE=${3:-release}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}
flag=(); [[ "$PROFILE" == release ]] && flag=(--release)
# WEIR_BENCH_NO_BUILD=1: use the binaries already built (a release build takes long)
[[ -n "${WEIR_BENCH_NO_BUILD:-}" ]] ||
  (cd "$repo" && cargo build "${flag[@]}" -q -p weir-cli -p weir-benches --bin weir --bin nats_count)
dir=$([[ "$PROFILE" == release ]] && echo release || echo debug)
WEIR=$CARGO_TARGET_DIR/$dir/weir
COUNT=$CARGO_TARGET_DIR/$dir/nats_count
venv=${WEIR_CACHE:-$HOME/.cache/weir}/venv
py=${WEIR_TEST_PYTHON:-$venv/bin/python}
work=$(mktemp -d)
port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$venv/bin/nats-server" -a 127.0.0.1 -p "$port" -js -sd "$work/store" -l "$work/server.log" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$work"' EXIT
URL=nats://127.0.0.1:$port
for _ in $(seq 100); do "$py" -c "import socket; socket.create_connection(('127.0.0.1', $port))" 2>/dev/null && break; sleep 0.1; done
echo "publishing $N events to stream BENCH..." >&2
"$WEIR" generate data-ingestion --count "$N" --seed 42 --out "$work/events.ndjson" 2>/dev/null
"$py" "$repo/cli/tests/support/nats_publish.py" "$URL" create BENCH 'bench.>'
t0=$(date +%s.%N)
"$py" "$repo/cli/tests/support/nats_publish.py" "$URL" publish "$work/events.ndjson" bench.a bench.b
echo "published in $(echo "$(date +%s.%N) - $t0" | bc) s" >&2
rm -f "$work/events.ndjson"
cpu_of() { # user+system seconds of a finished command, from /usr/bin/time
  awk -F: '/User time/ {u=$2} /System time/ {s=$2} END {print u + s}' "$1"
}
run_weir() {
  bench_pipeline nats-bench "$work" \
    "nats: { url: \"$URL\", stream: BENCH, consumer: weir-bench-$RANDOM$RANDOM, start_from: earliest, fetch_batch: ${FETCH_BATCH:-1000} }" \
    >"$work/p.yaml"
  rm -rf "$work/state"
  [[ -z "${CHECKPOINT:-}" ]] || echo "checkpoint: { dir: $work/state, interval: $CHECKPOINT }" >>"$work/p.yaml"
  RUST_LOG=warn /usr/bin/time -v -o "$work/weir.time" "$WEIR" run "$work/p.yaml" --until-caught-up --parallelism 2 >"$work/weir.out"
}
echo "profile: $PROFILE, $N events, $(nproc) cores, bare acks every ${ACK_EVERY:-16384}, weir checkpoint: ${CHECKPOINT:-none}"
printf "%-6s %-14s %10s %14s %14s\n" round engine seconds messages/s events/cpu-s
for r in $(seq 1 "$ROUNDS"); do
  t0=$(date +%s.%N)
  /usr/bin/time -v -o "$work/bare.time" "$COUNT" "$URL" BENCH "$N" >/dev/null
  t1=$(date +%s.%N)
  bare_s=$(echo "$t1 - $t0" | bc -l)
  bare_rate=$(echo "$N / $bare_s" | bc -l)
  printf "%-6s %-14s %10.2f %14.0f %14.0f\n" "$r" bare-consumer "$bare_s" "$bare_rate" "$(echo "$N / $(cpu_of "$work/bare.time")" | bc -l)"
  t0=$(date +%s.%N)
  run_weir
  t1=$(date +%s.%N)
  weir_s=$(echo "$t1 - $t0" | bc -l)
  weir_rate=$(echo "$N / $weir_s" | bc -l)
  printf "%-6s %-14s %10.2f %14.0f %14.0f\n" "$r" weir "$weir_s" "$weir_rate" "$(echo "$N / $(cpu_of "$work/weir.time")" | bc -l)"
  grep -q "$N events processed in" "$work/weir.out" || { echo "weir did not read $N events:"; cat "$work/weir.out"; exit 1; }
  printf "%-6s ratio weir / bare consumer: %.2f\n" "$r" "$(echo "$weir_rate / $bare_rate" | bc -l)"
done
