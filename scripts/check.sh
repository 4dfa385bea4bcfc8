#!/usr/bin/env bash
# The fast edit loop: format check, clippy on the host and on wasm32-wasip1 (warnings denied), the
# core's unit tests on the host and inside wasm (wasm-bindgen-test under Node). No Envoy needed.
# scripts/test.sh runs this first, then everything else.
set -euo pipefail
cd "$(dirname "$0")/.."
MESHGUARD_SETUP=functions source scripts/setup.sh
ensure_rust_targets
ensure_wasm_test_runner

step() { printf '\n==> %s\n' "$*"; }

step "format and lint (host and wasm32-wasip1, warnings denied)"
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo clippy --target wasm32-wasip1 --lib --quiet -- -D warnings

step "core unit tests on the host"
cargo test --quiet --lib

step "core unit tests inside wasm (wasm-bindgen-test under Node)"
cargo test --lib --target wasm32-unknown-unknown

step "check passed"
