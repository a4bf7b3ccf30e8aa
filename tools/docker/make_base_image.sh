#!/usr/bin/env bash
# Build (once) a minimal Debian bookworm base image for ARCH (amd64 | arm64) without Docker Hub.
#
#   tools/docker/make_base_image.sh amd64   ->  prints the image name, e.g. local/debian:bookworm-amd64
#
# Cached on two levels: the image in the engine (docker image inspect) and the debootstrap root as a
# tarball under /var/cache/metaedge/ (so a wiped engine re-imports in seconds instead of ~70 s).
# The image config records ARCH, so `docker build --platform linux/arm64` accepts the arm64 one.
# Needs root, debootstrap and, for a foreign ARCH, qemu-user-static with binfmt (setup.sh).
# Environment: DOCKER_HOST (from start_dockerd.sh), METAEDGE_DEBIAN_MIRROR, METAEDGE_CACHE.
set -euo pipefail

ARCH="${1:-amd64}"
case "$ARCH" in
    amd64|x86_64) ARCH=amd64 ;;
    arm64|aarch64) ARCH=arm64 ;;
    *) echo "make_base_image.sh: ARCH must be amd64 or arm64, got $ARCH" >&2; exit 1 ;;
esac
SUITE=bookworm
IMAGE="local/debian:$SUITE-$ARCH"
MIRROR="${METAEDGE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CACHE="${METAEDGE_CACHE:-/var/cache/metaedge}/debootstrap"
TARBALL="$CACHE/$SUITE-$ARCH.tar"
DOCKER=/usr/bin/docker
[ -x "$DOCKER" ] || DOCKER="$(command -v docker)"

if "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "$IMAGE"
    exit 0
fi

mkdir -p "$CACHE"
if [ ! -s "$TARBALL" ]; then
    command -v debootstrap >/dev/null || { echo "make_base_image.sh: debootstrap missing; run setup.sh" >&2; exit 1; }
    ROOT="$(mktemp -d "$CACHE/root-$ARCH.XXXXXX")"
    trap 'rm -rf "$ROOT"' EXIT
    # A foreign ARCH runs its second stage through qemu-user-static (binfmt 'F' flag).
    debootstrap --arch="$ARCH" --variant=minbase "$SUITE" "$ROOT" "$MIRROR" >"$CACHE/debootstrap-$ARCH.log" 2>&1 || {
        echo "make_base_image.sh: debootstrap failed; see $CACHE/debootstrap-$ARCH.log" >&2
        tail -n 15 "$CACHE/debootstrap-$ARCH.log" >&2
        exit 1
    }
    # Smaller image, no stale lists: builds run apt-get update anyway.
    rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
    tar -C "$ROOT" -cf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
fi

# `docker import` on dockerd 20.10 always records the daemon's own architecture (its --platform
# only sets the OS), so write a one-layer image archive with the right config and `docker load` it.
WORK="$(mktemp -d "$CACHE/image-$ARCH.XXXXXX")"
trap 'rm -rf "$WORK" "${ROOT:-/nonexistent-root}"' EXIT
mkdir "$WORK/layer"
ln -s "$TARBALL" "$WORK/layer/layer.tar"
DIFF_ID="$(sha256sum "$TARBALL" | cut -d' ' -f1)"
NOW="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
VARIANT=""
[ "$ARCH" = arm64 ] && VARIANT=',"variant":"v8"'
cat >"$WORK/config.json" <<JSON
{"architecture":"$ARCH"$VARIANT,"os":"linux","created":"$NOW",
 "config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["/bin/bash"]},
 "rootfs":{"type":"layers","diff_ids":["sha256:$DIFF_ID"]},
 "history":[{"created":"$NOW","created_by":"debootstrap --variant=minbase $SUITE ($ARCH)"}]}
JSON
CONFIG="$(sha256sum "$WORK/config.json" | cut -d' ' -f1).json"
mv "$WORK/config.json" "$WORK/$CONFIG"
printf '[{"Config":"%s","RepoTags":["%s"],"Layers":["layer/layer.tar"]}]\n' "$CONFIG" "$IMAGE" >"$WORK/manifest.json"
tar -C "$WORK" -chf - . | "$DOCKER" load >/dev/null
got="$("$DOCKER" image inspect -f '{{.Architecture}}' "$IMAGE")"
if [ "$got" != "$ARCH" ]; then
    echo "make_base_image.sh: imported $IMAGE has architecture $got, expected $ARCH" >&2
    exit 1
fi
echo "$IMAGE"
