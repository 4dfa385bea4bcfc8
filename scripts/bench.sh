#!/usr/bin/env bash
# The load benchmark of the README: builds meshguard.wasm and the empty comparison filter,
# installs wrk if missing, then runs benches/load.py (arguments are passed on, e.g. --rounds 8).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
ensure_wrk
cargo build --quiet --release --target wasm32-wasip1
cargo build --quiet --release --target wasm32-wasip1 --manifest-path benches/empty-filter/Cargo.toml
cargo build --quiet --release --target wasm32-wasip1 --manifest-path benches/hostcall-probe/Cargo.toml
exec python3 benches/load.py "$@"
