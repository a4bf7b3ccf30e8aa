#!/usr/bin/env bash
# System packages and kernel helpers the test suite uses for real: Docker engine, debootstrap,
# QEMU user emulation for ARM64 (binfmt_misc) and the aarch64 cross compiler. Idempotent; needs
# root. Without root it says so and the tests that need these skip with that reason.
set -u
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "setup_system: not root; docker/qemu/cross-compile tests will skip (run as root to enable them)"
  exit 0
fi
for script in tools/arm64_device/setup.sh tools/docker/setup.sh; do
  if [ -x "$script" ] || [ -f "$script" ]; then
    bash "$script" || echo "setup_system: $script failed; tests that need it will skip with the reason"
  fi
done
exit 0
