#!/usr/bin/env bash
# NATS JetStream benchmark: a stream of EVENTS data-ingestion events (published once with
# nats-py into a throwaway nats-server's store), then, in turn within each round and in the
# same run, two bare async-nats pull consumers that only count messages
# (benches/src/bin/nats_count.rs) and weir's pipeline twice (decode + 1-minute windows + file
# sink, `--until-caught-up`, `--parallelism 2`, a fresh durable consumer each time):
#   bare-acks     AckPolicy::All, one acknowledgement per ACK_EVERY messages (default 16384)
#   bare-noack    AckPolicy::None: the server tracks no acknowledgement
#   weir-ckpt     with `checkpoint:` every CHECKPOINT (default 1s): its default ack policy,
#                 `none`, so the like-for-like bare consumer is bare-noack
#   weir-nockpt   without checkpoints: `ack_policy: all`, the file sink makes rows durable only
#                 at the end, so every acknowledgement waits for the end
#   benches/nats.sh [EVENTS] [ROUNDS] [PROFILE]     (default: 1000000 3 release)
#   FETCH_BATCH=N: weir's `fetch_batch` (default 1000, as the bare consumers' pulls)
#   WEIR_ACK_POLICY=all|none: weir-ckpt's `ack_policy` (default: the product's default, none)
#   WEIR_BENCH_NO_BUILD=1: use the binaries already built (a release build takes long)
# Prints per run the seconds, messages per second, events per CPU-second of the process (user +
# system) and the server's CPU-seconds; per round the ratios weir-ckpt / bare-noack (the bar
# of issue 26 is 0.8), weir-ckpt / bare-acks and weir-nockpt / bare-acks.
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
server_cpu() { # the server's user+system seconds so far
  awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$server/stat"
}
# run NAME COMMAND...: times one run; sets $rate (messages per second)
run() {
  local name=$1 c0 t0 t1 c1 s
  shift
  c0=$(server_cpu)
  t0=$(date +%s.%N)
  /usr/bin/time -v -o "$work/run.time" "$@" >"$work/run.out"
  t1=$(date +%s.%N)
  c1=$(server_cpu)
  s=$(echo "$t1 - $t0" | bc -l)
  rate=$(echo "$N / $s" | bc -l)
  printf "%-6s %-12s %8.2f %12.0f %13.0f %10.2f\n" "$r" "$name" "$s" "$rate" \
    "$(echo "$N / $(cpu_of "$work/run.time")" | bc -l)" "$(echo "$c1 - $c0" | bc -l)"
}
# weir_pipeline CHECKPOINTED: the pipeline file (a fresh consumer each time)
weir_pipeline() {
  local extra="" ack=""
  if [[ $1 == yes ]]; then
    extra="checkpoint: { dir: $work/state, interval: ${CHECKPOINT:-1s} }"
    [[ -z "${WEIR_ACK_POLICY:-}" ]] || ack=", ack_policy: $WEIR_ACK_POLICY"
  fi
  bench_pipeline nats-bench "$work" \
    "nats: { url: \"$URL\", stream: BENCH, consumer: weir-bench-$RANDOM$RANDOM, start_from: earliest, fetch_batch: ${FETCH_BATCH:-1000}$ack }" \
    "$extra" >"$work/p.yaml"
  rm -rf "$work/state"
}
run_weir() {
  weir_pipeline "$2"
  RUST_LOG=warn run "$1" "$WEIR" run "$work/p.yaml" --until-caught-up --parallelism 2
  grep -q "$N events processed in" "$work/run.out" || { echo "weir did not read $N events:"; cat "$work/run.out"; exit 1; }
  # its durable consumer goes, as the bare consumers' ephemeral ones do (one left with a
  # million unacknowledged messages would slow the server for the runs after it)
  "$py" "$repo/cli/tests/support/nats_publish.py" "$URL" delete-consumer BENCH "$(sed -n 's/.*consumer: \(weir-bench-[0-9]*\).*/\1/p' "$work/p.yaml")"
}
echo "profile: $PROFILE, $N events, $(nproc) cores, bare-acks every ${ACK_EVERY:-16384}, weir-ckpt every ${CHECKPOINT:-1s} with ack_policy ${WEIR_ACK_POLICY:-(default)}"
printf "%-6s %-12s %8s %12s %13s %10s\n" round run seconds messages/s events/cpu-s server-cpu-s
for r in $(seq 1 "$ROUNDS"); do
  ACK_EVERY=${ACK_EVERY:-16384} run bare-acks "$COUNT" "$URL" BENCH "$N"
  acks=$rate
  ACK_EVERY=0 run bare-noack "$COUNT" "$URL" BENCH "$N"
  noack=$rate
  run_weir weir-ckpt yes
  ckpt=$rate
  run_weir weir-nockpt no
  nockpt=$rate
  printf "%-6s ratios: weir-ckpt / bare-noack %.2f, weir-ckpt / bare-acks %.2f, weir-nockpt / bare-acks %.2f\n" \
    "$r" "$(echo "$ckpt / $noack" | bc -l)" "$(echo "$ckpt / $acks" | bc -l)" "$(echo "$nockpt / $acks" | bc -l)"
done
