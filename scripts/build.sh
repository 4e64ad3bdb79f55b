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
# Size first (README, "Bundle"): -Oz, plus merging functions that differ only in constants. A
# function is inlined into its only caller only when tiny: bigger ones compress better left apart
# (32 KB gzip). No --debuginfo: the name section (48 KB gzip) is only read by debuggers; a panic
# still logs its message and source location through worker's panic hook, and only the stack trace
# shows wasm function indices instead of names. The features are those worker-build enables.
"$WASM_OPT_BIN" build/index_bg.wasm -o build/index_bg.wasm \
  --merge-similar-functions -Oz --one-caller-inline-max-function-size 15 --strip-debug --strip-producers \
  --enable-mutable-globals --enable-sign-ext --enable-nontrapping-float-to-int --enable-bulk-memory \
  --enable-multivalue --enable-reference-types --enable-exception-handling
echo "$HASH" > build/.source-hash
