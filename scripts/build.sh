#!/bin/sh
# Builds the Worker into build/ with local tools only; does nothing when build/ is newer than every source.
set -eu
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

if [ -f build/index.js ] && [ -f build/index_bg.wasm ] && [ -z "${FORCE_BUILD:-}" ] &&
   [ -z "$(find src Cargo.toml Cargo.lock -newer build/index_bg.wasm -print -quit)" ]; then
  echo "[build] up to date"
  exit 0
fi

# worker-build would otherwise download these from a code host; use the pinned local copies.
export WASM_BINDGEN_BIN="$(command -v wasm-bindgen)"
export WASM_OPT_BIN="$PWD/node_modules/.bin/wasm-opt"
export ESBUILD_BIN="$PWD/node_modules/.bin/esbuild"
worker-build --release
