#!/usr/bin/env bash
# Installs what multiplex needs on a Debian machine, as root: Debian packages and a Python venv
# (.venv in the repo, multiplex installed editable). Idempotent and quick when everything is
# already there. `setup.sh lab` (scripts/lab.sh) installs what the lab needs; `setup.sh test`
# (scripts/test.sh, the default) adds what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-test}

# iproute2/iputils-ping/nftables: the kernel networking the delegates drive; bird2: the BGP
# speaker of bgp-routed networks (one per node netns, started by the node daemon, never a service).
PKGS="iproute2 iputils-ping nftables procps python3-venv bird2"
extras=k8s
if [ "$what" = test ]; then
  # containernetworking-plugins: interop tests; qemu + Debian kernel + busybox: the VM tier;
  # mmdebstrap + umoci: scripts/image.sh builds the image; containerd (+ runc): tests/image runs it
  PKGS="$PKGS containernetworking-plugins qemu-system-x86 linux-image-amd64 busybox-static"
  PKGS="$PKGS mmdebstrap umoci containerd runc"
  extras=test
fi
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "setup: installing Debian packages:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  # Packages must not start services here: Debian's bird2 would start a BIRD in the root network
  # namespace with a config that exports routes to the kernel, and containerd a daemon the tests
  # do not use (they start their own). policy-rc.d says no to every start during the install.
  own_prc=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && own_prc=1
  fi
  rc=0
  apt-get install -y -q --no-install-recommends $missing >/dev/null || rc=$?
  [ -n "$own_prc" ] && rm -f /usr/sbin/policy-rc.d
  [ "$rc" -eq 0 ] || exit "$rc"
fi
# ... nor at boot: BIRD runs only under the node daemon (or a test fixture), per node netns.
if [ -e /etc/systemd/system/multi-user.target.wants/bird.service ]; then
  systemctl disable bird.service >/dev/null 2>&1 || rm -f /etc/systemd/system/multi-user.target.wants/bird.service
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
echo "setup: installing multiplex[$extras] into .venv"
if ! out=$(.venv/bin/pip install -q --disable-pip-version-check -e ".[$extras]" 2>&1); then
  echo "$out" | grep -v '^WARNING: Location'
  echo "setup: pip install failed"
  exit 1
fi
.venv/bin/python -c "import multiplex, pyroute2, jsonschema, kubernetes"
