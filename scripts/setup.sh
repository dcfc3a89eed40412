#!/usr/bin/env bash
# Installs what multiplex needs on a Debian machine, as root: Debian packages and a Python venv
# (.venv in the repo, multiplex installed editable with its test extras). Idempotent and quick
# when everything is already there. Used by scripts/lab.sh and scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

# iproute2/iputils-ping/nftables: the kernel networking the delegates drive; bird2: BGP;
# containernetworking-plugins: interop tests; qemu + Debian kernel + busybox: the VM test tier.
PKGS="iproute2 iputils-ping nftables procps containernetworking-plugins bird2 qemu-system-x86 linux-image-amd64 busybox-static python3-venv"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "setup: installing Debian packages:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends $missing >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
extras=${MULTIPLEX_EXTRAS:-test}
echo "setup: installing multiplex[$extras] into .venv"
.venv/bin/pip install -q --disable-pip-version-check -e ".[$extras]" 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c "import multiplex, pyroute2, jsonschema" 
