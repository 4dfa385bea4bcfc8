#!/usr/bin/env bash
# The soak run (issue 8, docs/soak.md): mixed traffic with unique and duplicate event ids and a
# flapping upstream through a real Envoy with all four meshguard features, checking that Envoy's
# memory stays flat and no error counter moves. Installs wrk if missing, builds meshguard.wasm,
# then runs benches/soak.py (arguments are passed on). Exits non-zero when a check fails.
#   scripts/soak.sh                  # 3 minutes
#   scripts/soak.sh --duration 60    # the short mode CI runs
#   scripts/soak.sh --duration 600   # the long run of docs/soak.md
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
ensure_wrk
bash scripts/build-wasm.sh --quiet
exec python3 benches/soak.py "$@"
