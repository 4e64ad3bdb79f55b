#!/bin/sh
# Builds the Worker into build/ with local tools only; does nothing when the sources are those of the last build.
set -eu
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

# A content hash, not mtimes: a build that started before an edit must not count as fresh.
source_hash() {
  find src Cargo.toml Cargo.lock -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1
}
HASH=$(source_hash)
if [ -z "${FORCE_BUILD:-}" ] && [ -f build/index.js ] && [ -f build/index_bg.wasm ] &&
   [ "$(cat build/.source-hash 2>/dev/null)" = "$HASH" ]; then
  echo "[build] up to date"
  exit 0
fi

# worker-build would otherwise download these from a code host; use the pinned local copies.
export WASM_BINDGEN_BIN="$(command -v wasm-bindgen)"
export WASM_OPT_BIN="${WASM_OPT_BIN:-$PWD/node_modules/.bin/wasm-opt}"
export ESBUILD_BIN="$PWD/node_modules/.bin/esbuild"
worker-build --release
echo "$HASH" > build/.source-hash
