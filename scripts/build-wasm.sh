#!/usr/bin/env bash
# Builds meshguard.wasm (target/wasm32-wasip1/release/meshguard.wasm): cargo's release build, then
# the post-link step that removes the exports of the proxy-wasm callbacks meshguard never uses
# (scripts/prune_exports.py: Envoy then enters the module two times fewer per request). A plain
# `cargo build --release --target wasm32-wasip1` gives a module that works the same, entered
# for those callbacks too. Arguments go to cargo (e.g. --quiet).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --target wasm32-wasip1 "$@"
WASM=target/wasm32-wasip1/release/meshguard.wasm
python3 scripts/prune_exports.py "$WASM" "$WASM" --unused 2>/dev/null
python3 scripts/prune_exports.py --check "$WASM"
