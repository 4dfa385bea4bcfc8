#!/usr/bin/env bash
# The non-Rust checks of the shipped deployables (istio/, envoy/): CRD schema validation with
# broken copies, every meshguard configuration through `envoy --mode validate` with the real
# module, alert rules and dashboard queries through promtool, the OCI image built with buildah,
# docker-compose consistency. See scripts/check_deploy.py. Needs the release module
# (cargo build --release --target wasm32-wasip1) and Envoy (scripts/setup.sh).
# Installs what it needs, once: promtool (Debian's prometheus package) and buildah from apt,
# the pinned Python packages of scripts/deploy-requirements.txt into target/deploy-venv.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=()
command -v promtool >/dev/null 2>&1 || apt_packages+=(prometheus)
command -v buildah >/dev/null 2>&1 || apt_packages+=(buildah)
if [ ${#apt_packages[@]} -gt 0 ]; then
  echo "check-deploy: installing ${apt_packages[*]} (apt, once)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  # The prometheus package ships promtool; its server is neither needed nor started (no systemd).
  $SUDO apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null 2>&1 || {
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
  }
fi

VENV=target/deploy-venv
REQS=scripts/deploy-requirements.txt
if ! cmp -s "$REQS" "$VENV/requirements.txt" 2>/dev/null; then
  echo "check-deploy: installing the Python packages of $REQS into $VENV (once)"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQS"
  cp "$REQS" "$VENV/requirements.txt"
fi

exec "$VENV/bin/python" scripts/check_deploy.py "$@"
