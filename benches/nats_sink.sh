#!/usr/bin/env bash
# NATS sink benchmark (not run in CI): a pipeline of 1-hour windows per dataset (KEYS datasets,
# default 20,000: the rows come out together at the end of the input, so that the sink, not
# the engine, sets the pace) publishing its rows to a JetStream stream of a throwaway
# nats-server; then, in the same run, a bare async-nats JetStream publisher
# (nats/src/bin/nats-bare-publish.rs: the same payloads, the same max_in_flight, every
# acknowledgement awaited) publishing the very rows weir published to a second stream. Both
# are measured on the server's side, from the first stored message's timestamp to the last:
# messages per second.
#   benches/nats_sink.sh [EVENTS] [MAX_IN_FLIGHT...]   (default: 100000 "256")
# WEIR_BIN picks the weir binary; PROFILE=debug uses debug builds (default: release).
# Needs the tests' venv (scripts/test-env.sh): nats-server, nats-py.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-100000}
INFLIGHT=${2:-256}
cache=${WEIR_CACHE:-$HOME/.cache/weir}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
PROFILE=${PROFILE:-release}
flag=--release; [ "$PROFILE" = debug ] && flag=
WEIR=${WEIR_BIN:-$CARGO_TARGET_DIR/$PROFILE/weir}
BARE=$CARGO_TARGET_DIR/$PROFILE/nats-bare-publish
PY=${WEIR_TEST_PYTHON:-$cache/venv/bin/python}
SERVER=${WEIR_NATS_SERVER:-$cache/venv/bin/nats-server}
TOOL=$repo/tests/nats/nats_sink_tool.py
(cd "$repo" && cargo build $flag -q -p weir-nats --bin nats-bare-publish)
if [ -z "${WEIR_BIN:-}" ]; then
  (cd "$repo" && cargo build $flag -q -p weir-cli)
fi
work=$(mktemp -d)
port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$SERVER" -a 127.0.0.1 -p "$port" -js -sd "$work/store" -l "$work/server.log" &
server_pid=$!
cleanup() { kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
URL=nats://127.0.0.1:$port
for _ in $(seq 100); do # until the server takes connections
  "$PY" -c 'import asyncio, sys, nats; asyncio.run(nats.connect(sys.argv[1], allow_reconnect=False))' "$URL" 2>/dev/null && break
  sleep 0.1
done
"$WEIR" generate data-ingestion --count "$N" --keys "${KEYS:-20000}" --skew 0.5 --step-ms 1 --seed 5 --out "$work/events.ndjson" 2>/dev/null

span() { # stream: messages and rate between the first and last stored timestamps
  "$PY" - "$URL" "$1" <<'PY'
import asyncio, sys, nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
async def main():
    nc = await nats.connect(sys.argv[1]); js = nc.jetstream()
    info = await js.stream_info(sys.argv[2]); n = info.state.messages
    sub = await js.pull_subscribe(info.config.subjects[0], stream=sys.argv[2],
        config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL))
    ts = []
    while len(ts) < n:
        for m in await sub.fetch(min(1000, n - len(ts)), timeout=10):
            ts.append(m.metadata.timestamp.timestamp())
    s = max(ts) - min(ts)
    print(f"messages={n} span={s:.3f}s rate={n / s if s > 0 else float('nan'):.0f}/s")
    await nc.close()
asyncio.run(main())
PY
}

echo "nats sink benchmark: $N events, ${KEYS:-20000} datasets, $PROFILE build, $(nproc) cores"
for inflight in $INFLIGHT; do
  "$PY" "$TOOL" create "$URL" "WEIR$inflight" "bench.weir.$inflight"
  "$PY" "$TOOL" create "$URL" "BARE$inflight" "bench.bare.$inflight"
  cat > "$work/p.yaml" <<YAML
name: bench
sources:
  events:
    file: { path: $work/events.ndjson }
    format: json
    schema: data-ingestion
    event_time: { field: timestamp, max_out_of_orderness: 5s }
windows:
  per_dataset:
    from: events
    key: [datasetName]
    tumbling: 1h
    aggregates:
      events: count(*)
      records: sum(recordCount)
    sinks: [bus]
sinks:
  bus: { nats: { url: "$URL", subject: bench.weir.$inflight, max_in_flight: $inflight } }
dead_letter: { file: { path: $work/dead.ndjson } }
YAML
  /usr/bin/time -f "weir run: %e s wall, %U s user, %S s sys" "$WEIR" run "$work/p.yaml" 2>"$work/weir.err" >/dev/null || { cat "$work/weir.err"; exit 1; }
  tail -1 "$work/weir.err"
  echo -n "weir nats sink   max_in_flight=$inflight: "; span "WEIR$inflight"
  "$PY" "$TOOL" read "$URL" "WEIR$inflight" "$work/weir.read"
  "$PY" -c 'import json,sys; [print(json.loads(l)["data"]) for l in open(sys.argv[1])]' "$work/weir.read" > "$work/payloads.ndjson"
  echo -n "bare async-nats  max_in_flight=$inflight: "; "$BARE" "$URL" "bench.bare.$inflight" "$work/payloads.ndjson" "$inflight" >/dev/null; span "BARE$inflight"
done
