#!/usr/bin/env bash
# Start the emulated ARM64 device: tools/rpc_server.py running under qemu-aarch64-static on the
# cached bookworm arm64 root, bound to 127.0.0.1 and registered with a TVM RPC tracker.
#
#   tools/arm64_device/start_device.sh --tracker 127.0.0.1:9190 [--key arm64] [--port 9500] [--name dev0]
#
# Builds the root first if needed (build_root.sh, idempotent). Runs the server in the background,
# waits until it reports ready (importing TVM under emulation takes seconds to a minute) and prints
# "pid=<pid> port=<port> log=<file>". Stop it with stop_device.sh --name <name>. Starting a device
# whose name is already running is a no-op (idempotent).
#
# qemu runs with -L <root> rather than chroot + binfmt_misc, so it works whether or not binfmt_misc
# is mounted; the server serves sessions in-process, so it never needs to exec another aarch64 binary.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${METAEDGE_ARM64_CACHE:-/var/cache/metaedge/arm64}"
ROOT="$CACHE/root"
TRACKER="" KEY="arm64" PORT=9500 NAME="dev0" HOST="127.0.0.1" WAIT=300
while [ $# -gt 0 ]; do
    case "$1" in
        --tracker) TRACKER="$2"; shift 2 ;;
        --key) KEY="$2"; shift 2 ;;
        --port) PORT="$2"; shift 2 ;;
        --host) HOST="$2"; shift 2 ;;
        --name) NAME="$2"; shift 2 ;;
        --wait) WAIT="$2"; shift 2 ;;
        *) echo "start_device: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -n "$TRACKER" ] || { echo "start_device: --tracker HOST:PORT is required" >&2; exit 2; }

RUN="$CACHE/run"
mkdir -p "$RUN"
PIDF="$RUN/$NAME.pid" LOG="$RUN/$NAME.log"
if [ -f "$PIDF" ] && kill -0 "$(cat "$PIDF")" 2>/dev/null; then
    echo "pid=$(cat "$PIDF") port=$(cat "$RUN/$NAME.port" 2>/dev/null || echo "?") log=$LOG (already running)"
    exit 0
fi

"$HERE/build_root.sh" >&2
command -v qemu-aarch64-static >/dev/null || { echo "start_device: qemu-aarch64-static missing: run setup.sh" >&2; exit 2; }
PY="$(ls "$ROOT"/usr/bin/python3.* | grep -E 'python3\.[0-9]+$' | head -1)"

: >"$LOG"
# setsid: the device outlives this script and is stopped by its pid (process group) only.
PYTHONPATH="$ROOT/opt/metaedge-py" PYTHONDONTWRITEBYTECODE=1 TVM_NUM_THREADS="${TVM_NUM_THREADS:-1}" \
    setsid qemu-aarch64-static -L "$ROOT" "$PY" -u "$ROOT/opt/metaedge/rpc_server.py" \
    --host "$HOST" --port "$PORT" --tracker "$TRACKER" --key "$KEY" >>"$LOG" 2>&1 </dev/null &
PID=$!
echo "$PID" >"$PIDF"

deadline=$((SECONDS + WAIT))
while ! grep -q "metaedge-rpc-server ready" "$LOG"; do
    if ! kill -0 "$PID" 2>/dev/null; then
        echo "start_device: device exited; log follows" >&2; cat "$LOG" >&2; rm -f "$PIDF"; exit 1
    fi
    if [ $SECONDS -ge $deadline ]; then
        echo "start_device: not ready after ${WAIT}s; see $LOG" >&2; exit 1
    fi
    sleep 0.5
done
BOUND="$(grep -m1 "metaedge-rpc-server ready" "$LOG" | sed -E 's/.* [^ ]*:([0-9]+) key=.*/\1/')"
echo "$BOUND" >"$RUN/$NAME.port"
echo "pid=$PID port=$BOUND log=$LOG"
