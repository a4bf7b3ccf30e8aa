#!/usr/bin/env bash
# Build the emulated ARM64 device: a Debian bookworm arm64 root with python3, numpy and the aarch64
# apache-tvm wheels, cached under /var/cache/metaedge/arm64 (override with METAEDGE_ARM64_CACHE).
# Idempotent: each step leaves a stamp file and is skipped when its stamp exists, so a warm run
# costs a few milliseconds. Needs root and tools/arm64_device/setup.sh to have run.
#
# Cold cost on a 2-core x86 box: debootstrap (download + second stage under qemu) plus the wheel
# download; see the README in this folder for measured times.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${METAEDGE_ARM64_CACHE:-/var/cache/metaedge/arm64}"
ROOT="$CACHE/root"
MIRROR="${METAEDGE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# Keep in step with constraints.txt: ffi 0.1.15 segfaults in tvm.ir.save_json.
TVM_PIN="${METAEDGE_TVM_PIN:-apache-tvm==0.27.0.post1}"
FFI_PIN="${METAEDGE_TVM_FFI_PIN:-apache-tvm-ffi==0.1.14.post1}"
PYPI="$CACHE/root/opt/metaedge-py"

log() { echo "build_root: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "run as root (debootstrap needs it)"; exit 2
fi
mkdir -p "$CACHE"

# Serialise concurrent builders (CI jobs, test fixtures) on one lock.
exec 9>"$CACHE/.lock"
flock 9

if [ ! -f "$ROOT/.metaedge-debootstrap" ]; then
    command -v debootstrap >/dev/null || { log "debootstrap missing: run tools/arm64_device/setup.sh"; exit 2; }
    rm -rf "$ROOT.partial"
    log "debootstrap bookworm arm64 into $ROOT (cold: several minutes)"
    debootstrap --arch=arm64 --variant=minbase --include=python3,ca-certificates \
        bookworm "$ROOT.partial" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
        || { log "debootstrap failed; see $CACHE/debootstrap.log"; exit 1; }
    rm -rf "$ROOT"
    mv "$ROOT.partial" "$ROOT"
    touch "$ROOT/.metaedge-debootstrap"
fi

if [ ! -f "$PYPI/.metaedge-wheels" ]; then
    # Install with the host's pip for the device's platform: no pip and no compiler run under qemu.
    PIP="${METAEDGE_HOST_PIP:-}"
    if [ -z "$PIP" ]; then
        if [ -x "$HERE/../../.venv/bin/pip" ]; then PIP="$HERE/../../.venv/bin/pip"; else PIP="pip3"; fi
    fi
    PYVER="$(ls "$ROOT/usr/bin" | grep -E '^python3\.[0-9]+$' | head -1 | sed 's/python//')"
    log "installing aarch64 wheels for python $PYVER into $PYPI"
    rm -rf "$PYPI"
    "$PIP" install -q --no-deps --only-binary=:all: \
        --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
        --python-version "$PYVER" --implementation cp \
        --target "$PYPI" \
        "$TVM_PIN" "$FFI_PIN" numpy ml_dtypes typing_extensions psutil cloudpickle
    touch "$PYPI/.metaedge-wheels"
fi

# The server script is copied on every build so the device runs this checkout's version.
install -D -m 0644 "$HERE/../rpc_server.py" "$ROOT/opt/metaedge/rpc_server.py"
log "ready: $ROOT"
