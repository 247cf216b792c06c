#!/usr/bin/env bash
# Regenerates the golden cases from ../shared/data/gen_events.py and ../shared/oracle/window_oracle.py.
# Each case folder holds input.ndjson, pipeline.yaml (written by hand) and, per window W,
# expected_W.ndjson (the oracle's rows) and summary_W.json (the oracle's line/bad/late counts).
# usage: tests/golden/make.sh   (from the repository root or anywhere)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
shared=${SHARED:-$(cd "$here/../../../shared" && pwd)}
gen="python3 $shared/data/gen_events.py"
oracle="python3 $shared/oracle/window_oracle.py"
ING_AGGS=(--agg events=count --agg records=sum:recordCount --agg bytes=sum:sizeBytes --agg max_bytes=max:sizeBytes --agg failures=count_if:status=FAILURE)

expect() { # case window oracle-args...
  local c=$1 w=$2; shift 2
  $oracle "$here/$c/input.ndjson" "$@" -o "$here/$c/expected_$w.ndjson" 2> "$here/$c/summary_$w.json"
}

c=ingestion_1m
$gen data-ingestion 6000 -o $here/$c/input.ndjson --seed 11 --keys 40 --step-ms 200 --unicode-keys \
  --bad-frac 0.01 --late-frac 0.005 --late-ms 180000
expect $c per_dataset --schema data-ingestion --key datasetName --size 1m --ooo 5s "${ING_AGGS[@]}" \
  --agg min_records=min:recordCount --agg avg_bytes=avg:sizeBytes

c=ingestion_7m_compound
$gen data-ingestion 6000 -o $here/$c/input.ndjson --seed 12 --keys 25 --step-ms 300 --unicode-keys \
  --bad-frac 0.01 --late-frac 0.005 --late-ms 900000
expect $c by_dataset_source --schema data-ingestion --key datasetName --key source --size 7m --ooo 5s \
  --where status!=PARTIAL --agg events=count --agg records=sum:recordCount --agg failures=count_if:status=FAILURE

c=allowed_lateness
$gen data-ingestion 6000 -o $here/$c/input.ndjson --seed 13 --keys 30 --step-ms 100 \
  --jitter-frac 0.3 --jitter-ms 20000 --bad-frac 0.01 --late-frac 0.005 --late-ms 200000
expect $c lenient --schema data-ingestion --key datasetName --size 1m --ooo 2s --lateness 15s "${ING_AGGS[@]}"
expect $c strict --schema data-ingestion --key datasetName --size 1m --ooo 2s "${ING_AGGS[@]}"

c=health_nulls
$gen service-health 6000 -o $here/$c/input.ndjson --seed 14 --keys 30 --step-ms 150 --unicode-keys \
  --bad-frac 0.01 --late-frac 0.005 --late-ms 180000
expect $c per_service --schema service-health --key serviceName --size 1m --ooo 5s \
  --agg checks=count --agg messages=count:message --agg avg_latency=avg:latencyMs \
  --agg min_latency=min:latencyMs --agg max_error=max:errorRate --agg sum_error=sum:errorRate
expect $c by_message --schema service-health --key message --size 2m --ooo 5s --agg checks=count \
  --agg unhealthy=count_if:healthStatus=UNHEALTHY
