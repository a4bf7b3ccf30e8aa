#!/usr/bin/env bash
# A cross toolchain for the ARM64 targets (rpi4, jetson), so `metaedge compile --target rpi4`
# writes an aarch64 library after `make demo` alone. Best first: the distro's cross g++ when we
# are root (apt), else zig's C compiler from the ziglang wheel in the venv (no root needed).
# Idempotent; never fails the caller: without either, compiling for ARM64 reports
# `skipped: <what to install>`.
set -u
cd "$(dirname "$0")/.."
PY="${1:-.venv/bin/python}"
if command -v aarch64-linux-gnu-g++ >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  inst() { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends g++-aarch64-linux-gnu >/dev/null; }
  if inst || { apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null && inst; }; then
    echo "setup_cross: installed g++-aarch64-linux-gnu"
    exit 0
  fi
fi
if "$PY" -c "import ziglang" 2>/dev/null; then
  exit 0
fi
if "$PY" -m pip install -q -c constraints.txt ziglang; then
  echo "setup_cross: installed zig's cross compiler (ziglang wheel) into the venv"
else
  echo "setup_cross: no cross toolchain (apt needs root; pip could not install ziglang); ARM64 compiles will be skipped"
fi
exit 0
