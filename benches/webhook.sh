#!/usr/bin/env bash
# Webhook sink benchmark (not run in CI): a pipeline of 1-hour windows per dataset (20,000
# datasets, about 100 s of events: the rows come out together at the end of the input, so
# that the sink, not the engine, sets the pace) sending its rows to the tests' Python receiver (tests/webhook/receiver.py: every signature verified
# with the standardwebhooks library, row ids deduplicated), for several batch sizes and
# requests in flight; then, in the same run, a bare HTTP client (Python http.client,
# keep-alive, as many threads as requests in flight) posting the very bodies and headers weir
# sent to a fresh receiver of the same kind. Both are measured on the receiver's side, from
# its first answer to its last: requests (deliveries) and rows per second.
#   benches/webhook.sh [EVENTS] [CONFIGS]   (default: 100000 "1x4 100x1 100x4 1000x4")
# CONFIGS: batch_max_rows x max_in_flight. KEYS: datasets (default 20000), about the rows sent.
# WEIR_BIN picks the binary (default: a release build).
# Needs the tests' venv (scripts/test-env.sh) for standardwebhooks.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-100000}
CONFIGS=${2:-"1x4 100x1 100x4 1000x4"}
cache=${WEIR_CACHE:-$HOME/.cache/weir}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
WEIR=${WEIR_BIN:-$CARGO_TARGET_DIR/release/weir}
PY=${WEIR_TEST_PYTHON:-$cache/venv/bin/python}
if [ -z "${WEIR_BIN:-}" ]; then
  (cd "$repo" && cargo build --release -q -p weir-cli)
fi
SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
work=$(mktemp -d)
receiver_pid=
cleanup() { [ -n "$receiver_pid" ] && kill "$receiver_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
"$WEIR" generate data-ingestion --count "$N" --keys "${KEYS:-20000}" --skew 0.5 --step-ms 1 --seed 5 --out "$work/events.ndjson" 2>/dev/null

receiver() { # name: starts a fresh receiver recording to $work/name.record; sets $port
  [ -n "$receiver_pid" ] && kill "$receiver_pid" 2>/dev/null && wait "$receiver_pid" 2>/dev/null || true
  coproc R { exec "$PY" "$repo/tests/webhook/receiver.py" --secret "$SECRET" --record "$work/$1.record"; }
  receiver_pid=$R_PID
  read -r line <&"${R[0]}"
  port=${line#listening }
}
measure() { # name: requests, rows and rates on the receiver's side
  curl -s "http://127.0.0.1:$port/_state" > "$work/$1.state"
  "$PY" - "$1" "$work/$1.state" <<'PY' | tee -a "$work/report"
import json, sys
name, path = sys.argv[1:]
s = json.load(open(path))
t = [a for a, status in s["timeline"] if status == 200]
span = max(t) - min(t) if len(t) > 1 else float("nan")
rows = len(s["rows"]) + s["repeated_rows"]
print(f"{name:<22} requests={s['requests']:>7} rows={rows:>8} bad_signatures={s['bad_signatures']} "
      f"deliveries/s={s['requests'] / span:8.0f} rows/s={rows / span:9.0f} span={span:6.2f}s")
PY
}
bare() { # name record threads: posts the recorded requests again
  "$PY" - "$port" "$2" "$3" <<'PY'
import http.client, json, socket, sys, threading
port, record, threads = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
reqs = [json.loads(l) for l in open(record)]
def worker(part):
    c = http.client.HTTPConnection("127.0.0.1", port)
    c.connect()
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for r in part:
        c.request("POST", r["path"], body=r["body"].encode(), headers=r["headers"])
        resp = c.getresponse(); resp.read()
        assert resp.status == 200, resp.status
ts = [threading.Thread(target=worker, args=(reqs[i::threads],)) for i in range(threads)]
[t.start() for t in ts]; [t.join() for t in ts]
PY
}

for config in $CONFIGS; do
  rows=${config%x*}; inflight=${config#*x}
  receiver "weir-$config"
  cat > "$work/p.yaml" <<YAML
name: bench
sources:
  events:
    file: { path: $work/events.ndjson }
    format: json
    schema: data-ingestion
    event_time: { field: timestamp, max_out_of_orderness: 5s }
windows:
  per_dataset_1h:
    from: events
    key: [datasetName]
    tumbling: 1h
    aggregates:
      count: count(*)
      sum_recordCount: sum(recordCount)
      failure_count: count(*) FILTER (WHERE status = 'FAILURE')
    sinks: [hook]
sinks:
  hook:
    webhook: { url: "http://127.0.0.1:$port/hooks/{output}", secret: "$SECRET", batch_max_rows: $rows, max_in_flight: $inflight }
dead_letter: { file: { path: $work/dead.ndjson } }
YAML
  RUST_LOG=warn "$WEIR" run "$work/p.yaml" > "$work/summary" 2> "$work/log"
  measure "weir $config"
  receiver "bare-$config"
  bare "bare $config" "$work/weir-$config.record" "$inflight"
  measure "bare client $config"
done
