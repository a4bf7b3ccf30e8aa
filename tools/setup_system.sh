#!/usr/bin/env bash
# System packages and kernel helpers the test suite uses for real: Docker engine, debootstrap,
# QEMU user emulation for ARM64 (binfmt_misc), the aarch64 cross compiler and the Fashion-MNIST
# benchmark data (Debian package dataset-fashion-mnist). Idempotent; needs root. Without root it
# says so and the tests that need these skip with that reason.
set -u
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "setup_system: not root; docker/qemu/cross-compile/Fashion-MNIST tests will skip (run as root to enable them)"
  exit 0
fi
for script in tools/arm64_device/setup.sh tools/docker/setup.sh; do
  if [ -x "$script" ] || [ -f "$script" ]; then
    bash "$script" || echo "setup_system: $script failed; tests that need it will skip with the reason"
  fi
done
FASHION_DIR=/usr/share/datasets/fashion-mnist
if [ ! -d "$FASHION_DIR" ]; then
  # `--data fashion-mnist` and its test read the IDX files this package installs.
  apt_install() { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends dataset-fashion-mnist; }
  { apt_install || { apt-get -o DPkg::Lock::Timeout=600 update -q && apt_install; }; } \
    || echo "setup_system: could not install dataset-fashion-mnist; the real Fashion-MNIST test will skip (pass --data DIR with the IDX files instead)"
fi
exit 0
