#!/usr/bin/env bash
# Runs every test of meshguard: lint, the core's unit tests on the host and inside wasm (Node),
# the release wasm build with its size bound, `envoy --mode validate` of every shipped bootstrap,
# and the integration suite against a real Envoy. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

WASM=target/wasm32-wasip1/release/meshguard.wasm
MAX_WASM_BYTES=400000
step() { printf '\n==> %s\n' "$*"; }

# wasm-bindgen-test-runner must match the wasm-bindgen version in Cargo.lock.
WBG_VERSION=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/[^0-9.]/, "", $0); print; exit}' Cargo.lock)
if ! wasm-bindgen-test-runner --version 2>/dev/null | grep -q " ${WBG_VERSION}\$"; then
  step "installing wasm-bindgen-cli ${WBG_VERSION} (once; a few minutes)"
  cargo install --quiet wasm-bindgen-cli --version "${WBG_VERSION}"
fi
command -v node >/dev/null || { echo "Node.js is required for the wasm unit tests" >&2; exit 1; }

step "format and lint (host and wasm32-wasip1, warnings denied)"
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo clippy --target wasm32-wasip1 --lib --quiet -- -D warnings

step "core unit tests on the host"
cargo test --lib

step "core unit tests inside wasm (wasm-bindgen-test under Node)"
cargo test --lib --target wasm32-unknown-unknown

step "release wasm"
cargo build --release --target wasm32-wasip1
size=$(stat -c %s "$WASM")
echo "meshguard.wasm: ${size} bytes (budget ${MAX_WASM_BYTES})"
if [ "$size" -gt "$MAX_WASM_BYTES" ]; then echo "wasm over budget" >&2; exit 1; fi

step "fuzzing: every cargo-fuzz target for 15 s (docs/fuzzing.md)"
bash scripts/fuzz.sh 15

step "envoy --mode validate of the shipped bootstraps"
for bootstrap in envoy/*.yaml; do
  grep -q '^static_resources:' "$bootstrap" || continue
  envoy --mode validate -c "$bootstrap" --log-level error >/dev/null
  echo "valid: $bootstrap"
done

step "deployables: Istio CRD schemas, envoy --mode validate of every pluginConfig, promtool, OCI image"
bash scripts/check-deploy.sh

step "integration tests against a real Envoy (--concurrency 2)"
cargo test --tests --no-fail-fast -- --test-threads "${TEST_THREADS:-3}"

step "soak: 60 s of mixed traffic against a flapping upstream (memory flat, no error counters; docs/soak.md)"
bash scripts/soak.sh --duration 60
