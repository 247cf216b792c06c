#!/usr/bin/env bash
# Makes the peers' Python venv once (default ~/.cache/weir/peers-venv; PEERS_VENV), again when
# requirements.txt changes, and prints its python.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${PEERS_VENV:-${WEIR_CACHE:-$HOME/.cache/weir}/peers-venv}
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$here/requirements.txt" "$venv/requirements.txt"; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt" >&2
  cp "$here/requirements.txt" "$venv/requirements.txt"
fi
echo "$venv/bin/python"
