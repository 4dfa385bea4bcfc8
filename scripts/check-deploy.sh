#!/usr/bin/env bash
# The non-Rust checks of the shipped deployables (istio/, envoy/): CRD schema validation with
# broken copies, istioctl analyze's EnvoyFilter rules (IST0151-IST0154), the consistent-hashing
# files agreeing (DestinationRule, hash-policy EnvoyFilter, envoy/outbound.yaml) and the hash list
# Istio serves through `envoy --mode validate`, every meshguard configuration through `envoy --mode validate` with the real
# module, alert rules and dashboard queries through promtool, the OCI image built with buildah,
# docker-compose consistency. See scripts/check_deploy.py. Needs the release module
# (scripts/build-wasm.sh) and Envoy (scripts/setup.sh).
# Installs what it needs, once: promtool (extracted from Debian's prometheus package into
# target/deploy-tools), buildah (apt), the pinned Python packages of scripts/deploy-requirements.txt
# (into target/deploy-venv).
set -euo pipefail
cd "$(dirname "$0")/.."

# promtool: taken out of Debian's prometheus package without installing it (installing would
# also enable a Prometheus server where systemd runs). Needs only the package lists.
TOOLS=target/deploy-tools
if ! command -v promtool >/dev/null 2>&1 && [ ! -x "$TOOLS/root/usr/bin/promtool" ]; then
  echo "check-deploy: fetching promtool (Debian package prometheus, once)"
  rm -rf "$TOOLS" && mkdir -p "$TOOLS"
  (cd "$TOOLS" && { apt-get download prometheus 2>/dev/null || { apt-get update -qq && apt-get download prometheus; }; } \
     && dpkg-deb -x prometheus_*.deb root && rm -f prometheus_*.deb)
fi
export PATH="$PWD/$TOOLS/root/usr/bin:$PATH"

# buildah builds istio/Dockerfile without a Docker engine.
if ! command -v buildah >/dev/null 2>&1; then
  echo "check-deploy: installing buildah (apt, once)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -qq --no-install-recommends buildah >/dev/null 2>&1 || {
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends buildah >/dev/null
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
