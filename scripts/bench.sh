#!/usr/bin/env bash
# The load benchmark of the README: builds meshguard.wasm and the comparison filters (an empty
# Rust proxy-wasm filter, the host-call probe), installs wrk, h2load and etcd if missing, then runs
# benches/load.py (arguments are passed on, e.g. --rounds 8 --duration 5; docs/performance.md).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
ensure_wrk
# etcd, the shared dedup store of the dedup-etcd rows (Debian etcd-server).
ensure_etcd

# h2load, the HTTP/2 load generator of the h2: rows (Debian nghttp2-client).
if ! command -v h2load >/dev/null; then
  echo "setup: installing h2load (apt-get nghttp2-client)"
  apt-get update -qq && apt-get install -y -qq nghttp2-client >/dev/null
fi

bash scripts/build-wasm.sh --quiet
cargo build --quiet --release --target wasm32-wasip1 --manifest-path benches/empty-filter/Cargo.toml
cargo build --quiet --release --target wasm32-wasip1 --manifest-path benches/hostcall-probe/Cargo.toml
# The report prints the command that produced it.
MESHGUARD_BENCH_COMMAND="scripts/bench.sh${*:+ $(printf '%q ' "$@")}"
export MESHGUARD_BENCH_COMMAND="${MESHGUARD_BENCH_COMMAND% }"
exec python3 benches/load.py "$@"
