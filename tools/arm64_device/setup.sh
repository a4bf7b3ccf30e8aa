#!/usr/bin/env bash
# Host setup for cross-compiling to and emulating an ARM64 device. Run as root; idempotent:
# installs only missing packages, mounts binfmt_misc only when it is not mounted already (the
# Docker helper's setup mounts it too) and enables the qemu-aarch64 handler only when it is off.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: run as root (it installs packages and mounts binfmt_misc)" >&2
    exit 2
fi

need=()
command -v aarch64-linux-gnu-g++ >/dev/null || need+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
command -v update-binfmts >/dev/null || need+=(binfmt-support)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ "${#need[@]}" -gt 0 ]; then
    echo "setup.sh: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# binfmt_misc lets the kernel run aarch64 ELF files through qemu transparently (needed by
# TVM's RPC server, which re-execs python for its workers). Tolerate a read-only /proc
# (unprivileged containers): the emulated device then falls back to threaded sessions.
if ! mountpoint -q /proc/sys/fs/binfmt_misc; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null \
        || echo "setup.sh: could not mount binfmt_misc (continuing; the device serves sessions in threads)" >&2
fi
if mountpoint -q /proc/sys/fs/binfmt_misc; then
    if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
        update-binfmts --enable qemu-aarch64 2>/dev/null \
            || update-binfmts --import qemu-aarch64 2>/dev/null \
            || echo "setup.sh: could not enable the qemu-aarch64 binfmt handler (continuing)" >&2
    fi
fi
echo "setup.sh: ok (aarch64-linux-gnu-g++: $(command -v aarch64-linux-gnu-g++), qemu: $(command -v qemu-aarch64-static))"
