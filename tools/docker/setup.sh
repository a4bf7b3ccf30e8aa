#!/usr/bin/env bash
# One-time, idempotent system setup for metaedge's Docker tests and bundles (run as root).
# Installs dockerd (Debian docker.io), debootstrap and QEMU user emulation, and enables the
# aarch64 binfmt handler so arm64 images run on x86_64. Safe to run again: each step checks first.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: must run as root (apt-get, mount)" >&2
    exit 1
fi

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
[ -x /usr/bin/docker ] || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
[ -x /usr/bin/qemu-aarch64-static ] || need+=(qemu-user-static)
command -v update-binfmts >/dev/null 2>&1 || need+=(binfmt-support)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    # shellcheck disable=SC2046
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
fi

# binfmt_misc lets the kernel hand aarch64 ELF files to qemu-aarch64-static.
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || {
        echo "setup.sh: cannot mount binfmt_misc; ARM64 emulation unavailable" >&2
    }
fi
if [ -e /proc/sys/fs/binfmt_misc/register ] && [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    update-binfmts --enable qemu-aarch64 || echo "setup.sh: update-binfmts --enable qemu-aarch64 failed" >&2
fi

echo "setup.sh: ok (dockerd $(dockerd --version 2>/dev/null | awk '{print $3}' | tr -d ,)," \
     "qemu-aarch64: $([ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] && echo enabled || echo missing))"
