#!/usr/bin/env bash
# Builds meshguard.wasm and starts it in a real local Envoy (envoy/envoy.yaml, two workers) in
# front of a demo upstream that echoes each request as JSON, with every feature on: correlation
# ids and trace context everywhere, event-id dedup on rule "payments", a circuit breaker on rule
# "inventory". Ctrl-C (or a TERM signal) stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

echo "building meshguard.wasm and the demo upstream ..."
bash scripts/build-wasm.sh --quiet
cargo build --quiet --release --example demo_upstream
echo "meshguard.wasm: $(stat -c %s target/wasm32-wasip1/release/meshguard.wasm) bytes"

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

target/release/examples/demo_upstream 127.0.0.1:8081 &
pids+=($!)
envoy -c envoy/envoy.yaml --concurrency 2 --use-dynamic-base-id --file-flush-interval-msec 100 \
  --log-level warn --component-log-level wasm:info &
envoy_pid=$!
pids+=("$envoy_pid")

deadline=$((SECONDS + 30))
until [ "$(curl -fsS http://127.0.0.1:9901/ready 2>/dev/null)" = "LIVE" ]; do
  if ! kill -0 "$envoy_pid" 2>/dev/null; then
    echo "Envoy exited (see its log above; are ports 10000, 9901 or 8081 in use?)" >&2
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "Envoy is not ready after 30 s (see its log above)" >&2
    exit 1
  fi
  sleep 0.1
done

cat <<'MSG'

meshguard is running in Envoy on http://127.0.0.1:10000 (admin http://127.0.0.1:9901),
in front of the demo upstream on 127.0.0.1:8081. Try, in another terminal:

Correlation id and trace context (every request; the upstream echoes what it received as JSON):
  curl -si 127.0.0.1:10000/hello                                  # an x-correlation-id is generated and echoed
  curl -si 127.0.0.1:10000/hello -H 'x-correlation-id: order-42'  # kept as is
  curl -s 127.0.0.1:10000/hello -H 'traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'
                                                                  # the upstream got the same traceparent

Event-id dedup (rule "payments": POSTs to /charge):
  curl -si -X POST 127.0.0.1:10000/charge -H 'x-event-id: evt-1'  # first delivery: reaches the upstream
  curl -si -X POST 127.0.0.1:10000/charge -H 'x-event-id: evt-1'  # again: answered by meshguard from its
                                                                  # store, x-meshguard-dedup: duplicate

Circuit breaker (rule "inventory": three failures in a row open it for 10 s):
  for i in 1 2 3; do curl -s -o /dev/null -w '%{http_code}\n' '127.0.0.1:10000/inventory?status=503'; done
                                                                  # 503 three times, from the failing upstream
  curl -si 127.0.0.1:10000/inventory                              # 503 circuit_open with retry-after, answered
                                                                  # by meshguard; 10 s later three calls that
                                                                  # succeed (the probes) close it again

Metrics:
  curl -s 127.0.0.1:9901/stats/prometheus | grep '^meshguard_'

Each request prints an access-log line (JSON, with meshguard's ids from filter state) and,
as envoy/envoy.yaml sets "log": {"requests": true}, meshguard's own JSON line. Ctrl-C stops.

MSG
wait -n "${pids[@]}"
