#!/usr/bin/env bash
# Installs what building and testing Colony needs, only when it is missing.
set -euo pipefail

need_apt=()
command -v cc >/dev/null || need_apt+=(build-essential)
command -v nc >/dev/null || need_apt+=(netcat-openbsd)
# The dashboard's browser tests drive Debian's headless Chromium over the DevTools protocol
# themselves (tests/dashboard/cdp.rs), so no WebDriver is needed.
command -v chromium >/dev/null || need_apt+=(chromium)
# The many-hosts tests' test bed (scripts/netns-cluster.sh) makes network namespaces with ip.
command -v ip >/dev/null || need_apt+=(iproute2)
# tests/prometheus.rs scrapes a cluster with Debian's Prometheus server, started by the test
# itself on loopback (the package's own service is not used).
command -v prometheus >/dev/null || need_apt+=(prometheus)
# `colony bench ping --compare nats://` is tested against Debian's nats-server, started by
# the test on loopback (the package's own service is not used). It installs in /usr/sbin.
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || need_apt+=(nats-server)

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# The SSM registry's tests and bench run moto's SSM server on loopback (python3 -m moto.server).
if ! python3 -c 'import sys, moto, flask, flask_cors; sys.exit(moto.__version__.split(".")[0] != "5")' >/dev/null 2>&1; then
  if ! python3 -m pip --version >/dev/null 2>&1; then
    echo "installing: python3 python3-pip"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3 python3-pip >/dev/null
  fi
  echo "installing: moto[ssm] 5, flask, flask-cors (the SSM registry's test server)"
  pip_install() { python3 -m pip install --quiet --disable-pip-version-check "$@" 'moto[ssm]>=5,<6' flask flask-cors; }
  # A distribution's own python3 refuses pip outside a venv (PEP 668) unless told.
  pip_install || pip_install --break-system-packages
fi

if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install Rust (stable) with rustup first" >&2
  exit 1
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy
echo "tools ready: $(cargo --version)"
