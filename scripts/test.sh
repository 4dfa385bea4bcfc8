#!/usr/bin/env bash
# Runs every test of meshguard: scripts/check.sh (format, lint, the core's unit tests on the host
# and inside wasm), the release wasm build with its size bound, fuzzing, `envoy --mode validate` of
# every shipped bootstrap, the deployables, the integration suite against a real Envoy and a soak.
# Installs what it needs first. CI runs it (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
ensure_test_peers

# The real-Envoy tests skip themselves when meshguard.wasm or envoy is missing (a plain `cargo
# test` on a fresh clone); here they must run, so a missing piece fails instead of passing.
export MESHGUARD_REQUIRE_ENVOY=1

WASM=target/wasm32-wasip1/release/meshguard.wasm
MAX_WASM_BYTES=400000
step() { printf '\n==> %s\n' "$*"; }

# The fast loop first: format, clippy (host and wasm32-wasip1), unit tests on the host and in wasm.
bash scripts/check.sh

step "release wasm"
bash scripts/build-wasm.sh
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
