#!/usr/bin/env bash
# Prepares what the tests need beyond cargo: a Python venv with independent Kafka and Avro
# clients (~/.cache/weir/venv) and the local broker (scripts/kafka.sh). Idempotent.
#   scripts/test-env.sh          install both and start the broker
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv="${WEIR_CACHE:-$HOME/.cache/weir}/venv"
req="$here/tests/kafka/requirements.txt"
if [[ ! -x "$venv/bin/python" ]] || ! cmp -s "$req" "$venv/requirements.txt"; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
    cp "$req" "$venv/requirements.txt"
fi
if [[ -z "${SKIP_BROKER:-}" ]]; then
    "$here/scripts/kafka.sh" start
fi
