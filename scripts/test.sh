#!/bin/sh
# Runs every test: host unit tests, lints, the Worker build, and the end-to-end suites under wrangler dev.
set -eu
cd "$(dirname "$0")/.."
sh scripts/setup.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

echo "[test] formatting and lints"
cargo fmt --all -- --check
cargo clippy --all-targets -q -- -D warnings
cargo clippy --target wasm32-unknown-unknown --lib -q -- -D warnings

echo "[test] host unit tests"
cargo test -q

echo "[test] building the Worker"
sh scripts/build.sh

echo "[test] the fakes, byte for byte"
node --test tests/support/selftest.mjs

echo "[test] end-to-end"
node --test --test-concurrency=1 tests/e2e/
