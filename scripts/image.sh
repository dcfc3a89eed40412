#!/usr/bin/env bash
# Builds the multiplex image without a registry or a container engine, from Debian packages and a
# wheel of this repository: the same content as the Containerfile (Debian bookworm, iproute2,
# nftables, bird2, wireguard-tools, python3; multiplex[k8s] in a venv at /opt/multiplex; run as
# root). Needs root (mmdebstrap in root mode mounts /proc and /dev for the hooks), mmdebstrap,
# umoci, python3-venv and network access to a Debian mirror and to PyPI for the wheels.
#
#   scripts/image.sh [build]      build build/image/multiplex-<version>.oci.tar (the default)
#   scripts/image.sh name         print the image reference (from manifests/image)
#   scripts/image.sh archive      print the archive path
#   scripts/image.sh push REF     copy the archive to a registry with skopeo (docker://REF)
#
# The image reference lives in ONE place, manifests/image; the DaemonSet and the IPAM GC
# Deployment name it (tests/unit/test_manifests.py checks that they agree, and that its tag is the
# package version). Downloaded .debs and wheels are kept under $MULTIPLEX_IMAGE_CACHE
# (/var/cache/multiplex-image by default), so a second build downloads nothing.
#
# dpkg runs with force-unsafe-io (no fsync per file: the tree is packed into a tar at the end, a
# crash means a rebuild), which keeps the root file system step fast on a busy disk.
#
# Design: the pip install inside the root file system runs as nobody (65534) into a directory
# owned by nobody, and only then is /opt/multiplex handed to root: the build of Python code
# from wheels never runs as root; the image runs as root (a CNI plugin and its daemon need it).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
IMAGE=$(tr -d '[:space:]' < manifests/image)       # e.g. localhost/multiplex:0.1.0
TAG=${IMAGE##*:}
NAME=${IMAGE%:*}
OUT_DIR=${MULTIPLEX_IMAGE_OUT:-$REPO/build/image}
ARCHIVE=$OUT_DIR/${NAME##*/}-$TAG.oci.tar
CACHE=${MULTIPLEX_IMAGE_CACHE:-/var/cache/multiplex-image}
SUITE=${MULTIPLEX_IMAGE_SUITE:-bookworm}
MIRROR=${MULTIPLEX_IMAGE_MIRROR:-http://deb.debian.org/debian}
PKGS="python3,python3-venv,iproute2,nftables,bird2,wireguard-tools"
PY=${PYTHON:-python3}

cmd=${1:-build}
case "$cmd" in
  name) echo "$IMAGE"; exit 0 ;;
  archive) echo "$ARCHIVE"; exit 0 ;;
  push)
    ref=${2:?usage: scripts/image.sh push REGISTRY/multiplex:TAG}
    [ -f "$ARCHIVE" ] || "$0" build
    exec skopeo copy "oci-archive:$ARCHIVE:$TAG" "docker://$ref" ;;
  build) ;;
  *) echo "usage: $0 [build|name|archive|push REF]" >&2; exit 2 ;;
esac

[ "$(id -u)" = 0 ] || { echo "image: run as root (mmdebstrap root mode)" >&2; exit 1; }
for tool in mmdebstrap umoci; do
  command -v $tool >/dev/null || { echo "image: $tool missing (scripts/setup.sh test installs it)" >&2; exit 1; }
done
version=$("$PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
[ "$version" = "$TAG" ] || { echo "image: manifests/image tags $TAG but pyproject.toml says $version" >&2; exit 1; }
# the wheels are built for the Python that builds them: it must be the image's (bookworm: 3.11)
IMAGE_PY=${MULTIPLEX_IMAGE_PYTHON_VERSION:-3.11}
have_py=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$have_py" = "$IMAGE_PY" ] || {
  echo "image: $PY is Python $have_py; the image's python3 is $IMAGE_PY: set PYTHON=python$IMAGE_PY" >&2; exit 1; }

work=$(mktemp -d /tmp/multiplex-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$CACHE/debs" "$CACHE/lists" "$CACHE/wheels" "$OUT_DIR"
t0=$(date +%s)

# 1. the wheels: multiplex from this tree (always built afresh), its dependencies from PyPI. Both
#    first offline from the cache (a second build needs no network), then online.
echo "image: wheels"
mkdir "$work/wheels"
pipw() { "$PY" -m pip wheel -q --disable-pip-version-check "$@" 2>&1 | grep -v '^WARNING: Location' || true; }
offline=(--no-index --find-links "$CACHE/wheels")
"$PY" -m pip wheel -q --disable-pip-version-check --no-deps "${offline[@]}" --wheel-dir "$work/wheels" "$REPO" \
  >/dev/null 2>&1 || true
if ! ls "$work"/wheels/multiplex-*.whl >/dev/null 2>&1; then
  # the build requirements (pyproject [build-system]) into the cache, for the next offline build
  "$PY" -m pip download -q --disable-pip-version-check --dest "$CACHE/wheels" setuptools wheel
  pipw --no-deps --wheel-dir "$work/wheels" "$REPO"
fi
deps=(--find-links "$work/wheels" --wheel-dir "$CACHE/wheels" "multiplex[k8s]==$version")
if ! "$PY" -m pip wheel -q --disable-pip-version-check --no-index --find-links "$CACHE/wheels" "${deps[@]}" \
    >/dev/null 2>&1; then
  pipw --find-links "$CACHE/wheels" "${deps[@]}"
fi
rm -f "$CACHE"/wheels/multiplex-*.whl
cp -n "$CACHE"/wheels/*.whl "$work/wheels/"
t1=$(date +%s)

# 2. the root file system, as a tar: Debian packages (debs cached), the venv installed as nobody
echo "image: root file system ($SUITE, $PKGS)"
mmdebstrap --quiet --variant=minbase --include="$PKGS" --format=tar \
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
  --aptopt='APT::Install-Recommends "false"' --aptopt='Acquire::Languages "none"' \
  --dpkgopt='force-unsafe-io' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/lintian/*' \
  --skip=essential/unlink \
  --setup-hook='mkdir -p "$1"/var/cache/apt/archives/ "$1"/var/lib/apt/lists/' \
  --setup-hook="sync-in $CACHE/debs /var/cache/apt/archives/" \
  --setup-hook="sync-in $CACHE/lists /var/lib/apt/lists/" \
  --customize-hook="sync-out /var/cache/apt/archives $CACHE/debs" \
  --customize-hook="sync-out /var/lib/apt/lists $CACHE/lists" \
  --customize-hook="copy-in $work/wheels /tmp" \
  --customize-hook='install -d -o 65534 -g 65534 "$1"/opt/multiplex' \
  --customize-hook='chroot --userspec=65534:65534 "$1" env -i HOME=/tmp PATH=/usr/bin:/bin python3 -m venv /opt/multiplex' \
  --customize-hook='chroot --userspec=65534:65534 "$1" env -i HOME=/tmp PATH=/usr/bin:/bin /opt/multiplex/bin/pip install -q \
      --no-index --find-links /tmp/wheels --no-compile --disable-pip-version-check "multiplex[k8s]"' \
  --customize-hook='chroot "$1" env -i PATH=/usr/bin:/bin /opt/multiplex/bin/pip uninstall -q -y pip setuptools' \
  --customize-hook='rm -rf "$1"/opt/multiplex/lib/python3*/site-packages/kubernetes/aio' \
  --customize-hook='chroot --userspec=65534:65534 "$1" env -i PATH=/usr/bin:/bin /opt/multiplex/bin/python3 -m compileall -q \
      -j0 /opt/multiplex/lib' \
  --customize-hook='chown -R 0:0 "$1"/opt/multiplex; ln -s /opt/multiplex/bin/multiplex "$1"/usr/local/bin/multiplex' \
  --customize-hook='rm -rf "$1"/tmp/wheels "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*' \
  --customize-hook='chroot "$1" env -i PATH=/opt/multiplex/bin:/usr/bin:/bin multiplex --version' \
  "$SUITE" "$work/rootfs.tar" "$MIRROR"
t2=$(date +%s)

# 3. the OCI image: one layer, the config the DaemonSet expects, tagged as manifests/image says
echo "image: OCI archive $ARCHIVE"
umoci init --layout "$work/oci"
umoci new --image "$work/oci:$TAG"
umoci raw add-layer --image "$work/oci:$TAG" --history.created_by "scripts/image.sh (mmdebstrap $SUITE)" \
  "$work/rootfs.tar"
umoci config --image "$work/oci:$TAG" --os linux --architecture amd64 --config.user 0:0 \
  --config.workingdir / \
  --config.env PATH=/opt/multiplex/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --config.cmd multiplex --config.cmd daemon \
  --config.label "org.opencontainers.image.title=multiplex" \
  --config.label "org.opencontainers.image.version=$TAG"
# the full reference for containerd (`ctr images import` names the image by it)
"$PY" - "$work/oci/index.json" "$IMAGE" <<'PY'
import json, sys
path, ref = sys.argv[1:]
index = json.load(open(path))
for m in index["manifests"]:
    m.setdefault("annotations", {})["io.containerd.image.name"] = ref
json.dump(index, open(path, "w"))
PY
umoci gc --layout "$work/oci"
tar -C "$work/oci" -cf "$ARCHIVE.tmp" oci-layout index.json blobs
mv "$ARCHIVE.tmp" "$ARCHIVE"
t3=$(date +%s)

# 4. what it weighs and what dominates
rootfs_mb=$(( $(stat -c %s "$work/rootfs.tar") / 1000000 ))
archive_mb=$(( $(stat -c %s "$ARCHIVE") / 1000000 ))
echo "image: $IMAGE -> $ARCHIVE"
echo "image: size: ${archive_mb} MB compressed (the archive), ${rootfs_mb} MB unpacked"
mkdir "$work/x" && tar -C "$work/x" -xf "$work/rootfs.tar" ./usr ./opt 2>/dev/null || true
echo "image: largest parts (MB):"
du -sm "$work"/x/opt/multiplex/lib/python3*/site-packages/* "$work"/x/usr/lib/python3* \
  "$work"/x/usr/lib/x86_64-linux-gnu "$work"/x/usr/share "$work"/x/usr/bin "$work"/x/usr/sbin 2>/dev/null \
  | sort -rn | sed -n "1,8s#$work/x##p" || true   # a report: sed reads all (no SIGPIPE for sort), never fatal
echo "image: time: wheels $((t1 - t0)) s, root file system $((t2 - t1)) s, OCI archive $((t3 - t2)) s"
