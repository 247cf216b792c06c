#!/usr/bin/env bash
# The repository stands alone (issue 25): it builds, runs and passes its tests with nothing
# beside it. Used by .ci/run.
#   scripts/alone.sh check   fail when a tracked file other than the documentation points into a
#                            sibling folder `shared` (../shared, /shared/); the exceptions:
#                            README.md, CHANGELOG.md, docs/ (prose, checked by scripts/docs.sh),
#                            scripts/docs.sh and this script (they name the pattern they refuse)
#   scripts/alone.sh copy    make a copy of this checkout (its commits and its working tree as it
#                            is, uncommitted changes included; no ignored files) at
#                            ~/.cache/weir/alone/weir (WEIR_ALONE_DIR), where no `shared` folder
#                            is beside it, and print its path
set -euo pipefail
cd "$(dirname "$0")/.."

case ${1:-} in
check)
    pattern='\.\./shared|/shared/'
    exceptions=':!README.md :!CHANGELOG.md :!docs/ :!scripts/docs.sh :!scripts/alone.sh'
    if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        # shellcheck disable=SC2086 # the pathspecs are words
        hits=$(git grep --untracked -n -I -E "$pattern" -- . $exceptions || true)
    else # not a git checkout: every file but target/
        hits=$(grep -rnIE "$pattern" --exclude-dir=target --exclude-dir=docs --exclude=README.md \
            --exclude=CHANGELOG.md --exclude=docs.sh --exclude=alone.sh . || true)
    fi
    if [[ -n $hits ]]; then
        echo "$hits" >&2
        echo "error: the lines above point outside the repository (../shared); the repository" \
            "must stand alone (scripts/alone.sh)" >&2
        exit 1
    fi
    echo "no tracked file but the documentation points at ../shared"
    ;;
copy)
    dir=${WEIR_ALONE_DIR:-$HOME/.cache/weir/alone/weir}
    parent=$(dirname "$dir")
    if [[ -e $parent/shared ]]; then
        echo "error: $parent/shared exists: choose another WEIR_ALONE_DIR" >&2
        exit 1
    fi
    rm -rf "$dir"
    mkdir -p "$parent"
    if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        mkdir "$dir"
        tar -c --exclude=./target -f - . | tar -x -C "$dir" -f -
        echo "$dir"
        exit 0
    fi
    git clone -q --no-hardlinks "$PWD" "$dir"
    git -C "$dir" checkout -q --detach "$(git rev-parse HEAD)"
    # the working tree as it is: changed and new files (not ignored ones), deletions
    git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do [[ -e $f || -L $f ]] && printf '%s\0' "$f"; done |
        tar -c --null -T - -f - | tar -x -C "$dir" -f -
    git ls-files -z --deleted | (cd "$dir" && xargs -0 -r rm -f --)
    echo "$dir"
    ;;
*)
    echo "usage: scripts/alone.sh check|copy" >&2
    exit 2
    ;;
esac
