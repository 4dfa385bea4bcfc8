#!/usr/bin/env bash
# Builds meshguard.wasm and starts it in a real local Envoy (envoy/envoy.yaml, two workers) in
# front of a demo upstream that echoes each request as JSON. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

echo "building meshguard.wasm and the demo upstream ..."
cargo build --quiet --release --target wasm32-wasip1
cargo build --quiet --release --example demo_upstream
echo "meshguard.wasm: $(stat -c %s target/wasm32-wasip1/release/meshguard.wasm) bytes"

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

target/release/examples/demo_upstream 127.0.0.1:8081 &
pids+=($!)
envoy -c envoy/envoy.yaml --concurrency 2 --use-dynamic-base-id --file-flush-interval-msec 100 \
  --log-level warn --component-log-level wasm:info &
pids+=($!)

for _ in $(seq 1 100); do
  if [ "$(curl -fsS http://127.0.0.1:9901/ready 2>/dev/null)" = "LIVE" ]; then break; fi
  sleep 0.1
done

cat <<'MSG'

meshguard is running in Envoy on http://127.0.0.1:10000 (admin http://127.0.0.1:9901),
in front of the demo upstream on 127.0.0.1:8081. Try:

  curl -si http://127.0.0.1:10000/hello                                  # a correlation id is generated and echoed
  curl -si http://127.0.0.1:10000/hello -H 'x-correlation-id: order-42'  # kept as is
  curl -si -X POST http://127.0.0.1:10000/charge                         # rule "payments" (route payments-v1)
  curl -s http://127.0.0.1:10000/hello -H 'traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'
                                                                         # trace continued (echo shows what the upstream got)
  curl -s  http://127.0.0.1:9901/stats/prometheus | grep ^meshguard      # meshguard's metrics

Each request prints an access-log line (JSON, with the filter-state ids) and, with
"log": {"requests": true} as in envoy/envoy.yaml, meshguard's own JSON line. Ctrl-C stops.

MSG
wait -n "${pids[@]}"
