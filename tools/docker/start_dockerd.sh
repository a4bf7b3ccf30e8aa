#!/usr/bin/env bash
# Start a private dockerd for metaedge (idempotent) and print the DOCKER_HOST to use.
#
# It has its own data-root, exec-root, pidfile and socket so it never touches a system Docker.
# If one is already answering on the socket it is reused. Prints exactly one line on stdout:
#   DOCKER_HOST=unix:///run/metaedge-docker/docker.sock
# Environment: METAEDGE_DOCKER_ROOT (default /var/lib/metaedge-docker),
#              METAEDGE_DOCKER_RUN (default /run/metaedge-docker), METAEDGE_DOCKERD_WAIT (s, default 60).
set -euo pipefail

ROOT="${METAEDGE_DOCKER_ROOT:-/var/lib/metaedge-docker}"
RUN="${METAEDGE_DOCKER_RUN:-/run/metaedge-docker}"
WAIT="${METAEDGE_DOCKERD_WAIT:-60}"
SOCK="$RUN/docker.sock"
PIDFILE="$RUN/dockerd.pid"
LOG="$ROOT/dockerd.log"
HOST="unix://$SOCK"
# Debian's client: it has BuildKit built in (a /usr/local/bin client may lack buildx).
CLIENT=/usr/bin/docker
[ -x "$CLIENT" ] || CLIENT="$(command -v docker || true)"

ready() { [ -S "$SOCK" ] && DOCKER_HOST="$HOST" "$CLIENT" version >/dev/null 2>&1; }

if ready; then
    echo "DOCKER_HOST=$HOST"
    exit 0
fi
if ! command -v dockerd >/dev/null 2>&1; then
    echo "start_dockerd.sh: dockerd not installed; run tools/docker/setup.sh as root" >&2
    exit 1
fi
if [ "$(id -u)" != 0 ]; then
    echo "start_dockerd.sh: must run as root" >&2
    exit 1
fi

mkdir -p "$ROOT/data" "$RUN/exec"
# A stale pidfile from a killed daemon makes dockerd refuse to start.
if [ -f "$PIDFILE" ] && ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    rm -f "$PIDFILE" "$SOCK"
fi
if [ ! -f "$PIDFILE" ]; then
    # setsid + nohup: the daemon outlives the shell (and pytest) that started it.
    setsid nohup dockerd \
        --data-root "$ROOT/data" \
        --exec-root "$RUN/exec" \
        --pidfile "$PIDFILE" \
        -H "$HOST" \
        >>"$LOG" 2>&1 </dev/null &
fi

for _ in $(seq 1 $((WAIT * 4))); do
    if ready; then
        echo "DOCKER_HOST=$HOST"
        exit 0
    fi
    sleep 0.25
done
echo "start_dockerd.sh: dockerd did not answer on $SOCK within ${WAIT}s; last log lines:" >&2
tail -n 20 "$LOG" >&2 || true
exit 1
