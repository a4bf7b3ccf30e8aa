#!/usr/bin/env bash
# Stop an emulated ARM64 device started by start_device.sh (by its recorded pid only).
set -euo pipefail
CACHE="${METAEDGE_ARM64_CACHE:-/var/cache/metaedge/arm64}"
NAME="dev0"
[ "${1:-}" = "--name" ] && NAME="$2"
PIDF="$CACHE/run/$NAME.pid"
if [ -f "$PIDF" ]; then
    PID="$(cat "$PIDF")"
    if kill -0 "$PID" 2>/dev/null; then
        kill -- "-$PID" 2>/dev/null || kill "$PID"
        for _ in $(seq 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$PID" 2>/dev/null && kill -9 "$PID"
    fi
    rm -f "$PIDF" "$CACHE/run/$NAME.port"
fi
echo "stopped $NAME"
