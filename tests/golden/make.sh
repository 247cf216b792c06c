#!/usr/bin/env bash
# Regenerates the golden cases: the events with `weir generate` (the engine's seeded generator),
# the expected rows with the project's reference model (tests/model/window_model.py).
# Each case folder holds input.ndjson, pipeline.yaml (written by hand) and, per window W,
# expected_W.ndjson (the model's rows) and summary_W.json (its line/bad/late counts).
# usage: tests/golden/make.sh           regenerate everything (builds weir; WEIR_BIN=path skips that)
#        tests/golden/make.sh --check   recompute the expected files from the committed inputs
#                                       and fail if any differs (no build; run by tests/golden.rs)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
model="python3 $repo/tests/model/window_model.py"
check=0
[[ ${1:-} == --check ]] && check=1
out=$here
if ((check)); then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
else
  weir=${WEIR_BIN:-$(cd "$repo" && cargo build -q -p weir-cli --bin weir --message-format=json |
    python3 -c 'import json, sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable")][-1])')}
fi

# every setting of the generator explicit: a case's own flags, then these for the others
DEFAULTS=(--seed 42 --keys 1000 --skew 1.1 --start-ms 1700000000000 --step-ms 1 --jitter-frac 0.2
  --jitter-ms 2000 --late-frac 0 --late-ms 3600000 --bad-frac 0)
gen() { # case kind count flags...
  local c=$1 kind=$2 count=$3 i; shift 3
  ((check)) && return 0
  local args=("$@")
  for ((i = 0; i < ${#DEFAULTS[@]}; i += 2)); do
    [[ " $* " == *" ${DEFAULTS[i]} "* ]] || args+=("${DEFAULTS[i]}" "${DEFAULTS[i + 1]}")
  done
  "$weir" generate "$kind" --count "$count" "${args[@]}" --out "$here/$c/input.ndjson"
}
expect() { # case window model-args...
  local c=$1 w=$2; shift 2
  mkdir -p "$out/$c"
  $model "$here/$c/input.ndjson" "$@" -o "$out/$c/expected_$w.ndjson" 2> "$out/$c/summary_$w.json"
}
ING_AGGS=(--agg events=count --agg records=sum:recordCount --agg bytes=sum:sizeBytes --agg max_bytes=max:sizeBytes --agg failures=count_if:status=FAILURE)

c=ingestion_1m
gen $c data-ingestion 6000 --seed 11 --keys 40 --step-ms 200 --unicode-keys \
  --bad-frac 0.01 --late-frac 0.005 --late-ms 180000
expect $c per_dataset --schema data-ingestion --key datasetName --size 1m --ooo 5s "${ING_AGGS[@]}" \
  --agg min_records=min:recordCount --agg avg_bytes=avg:sizeBytes

c=ingestion_7m_compound
gen $c data-ingestion 6000 --seed 12 --keys 25 --step-ms 300 --unicode-keys \
  --bad-frac 0.01 --late-frac 0.005 --late-ms 900000
expect $c by_dataset_source --schema data-ingestion --key datasetName --key source --size 7m --ooo 5s \
  --where status!=PARTIAL --agg events=count --agg records=sum:recordCount --agg failures=count_if:status=FAILURE

c=allowed_lateness
gen $c data-ingestion 6000 --seed 13 --keys 30 --step-ms 100 \
  --jitter-frac 0.3 --jitter-ms 20000 --bad-frac 0.01 --late-frac 0.005 --late-ms 200000
expect $c lenient --schema data-ingestion --key datasetName --size 1m --ooo 2s --lateness 15s "${ING_AGGS[@]}"
expect $c strict --schema data-ingestion --key datasetName --size 1m --ooo 2s "${ING_AGGS[@]}"

c=health_nulls
gen $c service-health 6000 --seed 14 --keys 30 --step-ms 150 --unicode-keys \
  --bad-frac 0.01 --late-frac 0.005 --late-ms 180000
expect $c per_service --schema service-health --key serviceName --size 1m --ooo 5s \
  --agg checks=count --agg messages=count:message --agg avg_latency=avg:latencyMs \
  --agg min_latency=min:latencyMs --agg max_error=max:errorRate --agg sum_error=sum:errorRate
expect $c by_message --schema service-health --key message --size 2m --ooo 5s --agg checks=count \
  --agg unhealthy=count_if:healthStatus=UNHEALTHY

if ((check)); then
  status=0
  for f in "$out"/*/*; do
    rel=${f#"$out"/}
    if ! cmp -s "$f" "$here/$rel"; then
      echo "tests/golden/$rel differs from the model's output (rerun tests/golden/make.sh)" >&2
      status=1
    fi
  done
  n=$(find "$out" -type f | wc -l)
  ((n == 12)) || { echo "expected 12 expected/summary files, made $n" >&2; status=1; }
  ((status == 0)) && echo "golden expectations: $n files equal the model's output"
  exit $status
fi
