#!/usr/bin/env bash
# Makes the peers' Python venv once (default ~/.cache/weir/peers-venv; PEERS_VENV), again when
# requirements.txt changes, and prints its python.
#   benches/peers/setup.sh [flink]
# With `flink`, also installs requirements-flink.txt (PyFlink, large) into the same venv, once
# and again when that file changes; it needs java (11+) on PATH or JAVA_HOME.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${PEERS_VENV:-${WEIR_CACHE:-$HOME/.cache/weir}/peers-venv}
install() { # requirements file
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/$1" >&2
  cp "$here/$1" "$venv/$1"
}
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$here/requirements.txt" "$venv/requirements.txt"; then
  python3 -m venv "$venv" >&2
  install requirements.txt
fi
if [ "${1:-}" = flink ]; then
  command -v java >/dev/null || [ -n "${JAVA_HOME:-}" ] || { echo "setup.sh: flink needs java" >&2; exit 1; }
  cmp -s "$here/requirements-flink.txt" "$venv/requirements-flink.txt" || install requirements-flink.txt
fi
echo "$venv/bin/python"
