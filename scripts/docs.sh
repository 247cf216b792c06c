#!/usr/bin/env bash
# Builds the book (docs/, an mdBook) and checks its links and the README's.
#   scripts/docs.sh           install mdBook once (cached outside the clone), build, check
#   scripts/docs.sh --open    the same, then print the path of the built book's index.html
# mdBook is installed with cargo into ~/.cache/weir/tools (WEIR_TOOLS), pinned to
# MDBOOK_VERSION; the book is built into $CARGO_TARGET_DIR/book (WEIR_BOOK_DIR), outside the
# repository. Exits non-zero on a build error, a broken relative link or #anchor, or a
# reference to files outside the repository (../shared). External links are listed, not fetched.
set -euo pipefail
cd "$(dirname "$0")/.."

MDBOOK_VERSION=0.5.4
tools=${WEIR_TOOLS:-$HOME/.cache/weir/tools}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}
out=${WEIR_BOOK_DIR:-$CARGO_TARGET_DIR/book}
mkdir -p "$out"
out=$(cd "$out" && pwd)

mdbook=$tools/bin/mdbook
if [[ ! -x $mdbook ]] || [[ "$("$mdbook" --version 2>/dev/null)" != "mdbook v$MDBOOK_VERSION" ]]; then
    echo "== installing mdBook $MDBOOK_VERSION into $tools (once; a few minutes)"
    # only the build and the search index: no `serve`/`watch` (tokio, axum, notify)
    cargo install mdbook --locked --version "$MDBOOK_VERSION" \
        --no-default-features --features search --root "$tools"
fi

echo "== mdbook build docs -> $out"
"$mdbook" build docs --dest-dir "$out"

echo "== links"
status=0
python3 scripts/check_links.py "$out" --markdown README.md || status=1

# the repository stands alone: nothing may point into a sibling checkout
if grep -rn --include='*.md' --include='*.toml' '\.\./shared' README.md docs/; then
    echo "error: the lines above point outside the repository (../shared)" >&2
    status=1
fi

if [[ $status == 0 && ${1:-} == --open ]]; then
    echo "the book: file://$out/index.html"
fi
exit $status
