#!/usr/bin/env bash
# Runs the official W3C trace-context test suite (github.com/w3c/trace-context, folder test/)
# against meshguard in the mesh's shape (envoy/w3c-mesh.yaml):
#
#   harness :7777 ──▶ inbound Envoy+meshguard :10010 ──▶ service :8082
#                 ◀── outbound Envoy+meshguard :10011 ◀──┘ (copies the trace headers it received)
#
# Usage: scripts/w3c-suite.sh PATH/TO/trace-context/test [TEST NAMES...]
# (clone https://github.com/w3c/trace-context first; it needs Python 3 and `aiohttp`).
# Without a path it starts the setup and waits, so the suite can be run by hand with
#   STRICT_LEVEL=2 SPEC_LEVEL=2 python3 test.py http://127.0.0.1:10010/test
# tests/w3c.rs runs the suite's cases in the same shape as part of the test command.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
suite="${1:-}"
[ $# -gt 0 ] && shift

bash scripts/build-wasm.sh --quiet
cargo build --quiet --release --example demo_upstream

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

target/release/examples/demo_upstream 127.0.0.1:8082 10011 >/dev/null &
pids+=($!)
envoy -c envoy/w3c-mesh.yaml --concurrency 2 --use-dynamic-base-id --log-level warn &
pids+=($!)
for _ in $(seq 1 100); do
  if [ "$(curl -fsS http://127.0.0.1:9902/ready 2>/dev/null)" = "LIVE" ]; then break; fi
  sleep 0.1
done

if [ -z "$suite" ]; then
  echo "service endpoint: http://127.0.0.1:10010/test (harness expected on 127.0.0.1:7777); Ctrl-C stops"
  wait -n "${pids[@]}"
else
  (cd "$suite" && STRICT_LEVEL=2 SPEC_LEVEL=2 python3 test.py http://127.0.0.1:10010/test "$@")
fi
