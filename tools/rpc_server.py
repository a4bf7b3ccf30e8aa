#!/usr/bin/env python3
"""Serve a device to metaedge over TVM RPC (or run the tracker devices register with).

Runs on the device itself (Raspberry Pi, Jetson, the emulated ARM64 root) with only ``tvm`` and
``numpy`` installed -- it does not import metaedge. Examples::

    # on a lab machine: the tracker every device registers with
    python3 tools/rpc_server.py --tracker-only --host 0.0.0.0 --port 9190
    # on each device
    python3 tools/rpc_server.py --host 0.0.0.0 --tracker lab-host:9190 --key rpi4
    # then, from the build machine
    metaedge compile --target rpi4 --device lab-host:9190/rpi4 metaedge-out/

Binds 127.0.0.1 unless ``--host`` says otherwise: an RPC server runs any uploaded code, so only
expose it on a network you trust.

Sessions are served one at a time *in this process* (``--mode inline``, the default). TVM's stock
server forks a worker per session; under user-mode emulation without binfmt_misc that worker's
exec fails and forked sessions can deadlock, and one session at a time is what a latency
measurement wants anyway. ``--mode fork`` keeps the stock behaviour (session timeouts enforced).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time

log = logging.getLogger("metaedge.rpc_server")


def _parse_addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"rpc_server: bad address {text!r}; write it as host:port")
    return host, int(port)


def _bind(host: str, port: int, port_end: int) -> tuple[socket.socket, int]:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    for p in range(port, max(port_end, port + 1)):
        try:
            sock.bind((host, p))
            sock.listen(1)
            return sock, p
        except OSError:
            continue
    raise SystemExit(f"rpc_server: no free port in [{port}, {port_end}) on {host}")


def _serving_inline(sock, addr, opts, load_library):
    """Replacement for tvm.rpc.server._serving: run the session loop in this process."""
    from tvm.rpc import _ffi_api
    from tvm.rpc import server as tvm_server
    from tvm.support import utils

    log.info("session from %s", addr)
    work = utils.tempdir()
    old_cwd = os.getcwd()
    os.chdir(work.path)  # uploaded files of different sessions never collide
    t0 = time.time()
    try:
        tvm_server._server_env(load_library, work)
        _ffi_api.ServerLoop(sock.fileno())
    except Exception as exc:  # a broken client must not take the device down
        log.warning("session from %s ended with %s", addr, exc)
    finally:
        os.chdir(old_cwd)
        work.remove()
        try:
            sock.close()
        except OSError:
            pass  # ServerLoop already closed the descriptor
    log.info("session from %s done in %.1f s", addr, time.time() - t0)


def serve(host: str, port: int, port_end: int, key: str, tracker: tuple[str, int] | None, custom_addr: str | None, load_library: str | None, mode: str) -> None:
    t0 = time.time()
    import tvm  # noqa: F401  (slow under emulation: ~50 s)
    from tvm.rpc import server as tvm_server

    log.info("tvm imported in %.1f s", time.time() - t0)
    if mode == "inline":
        tvm_server._serving = _serving_inline
    sock, bound = _bind(host, port, port_end)
    # The readiness line tests and scripts wait for; keep its format stable.
    print(f"metaedge-rpc-server ready {host}:{bound} key={key} tracker={tracker and '%s:%d' % tracker}", flush=True)
    tvm_server._listen_loop(sock, bound, key, tracker, load_library, custom_addr)


def serve_tracker(host: str, port: int, port_end: int) -> None:
    from tvm.rpc.tracker import PopenTrackerServerState

    state = PopenTrackerServerState(host, port, port_end, silent=True)
    print(f"metaedge-rpc-tracker ready {host}:{state.port}", flush=True)
    state.thread.join()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=9090, help="first port to try (default 9090)")
    p.add_argument("--port-end", type=int, default=None, help="end (exclusive) of the port range to try (default port+100)")
    p.add_argument("--tracker", help="register with the tracker at HOST:PORT")
    p.add_argument(
        "--key",
        default=None,
        help="device key clients request through the tracker (e.g. rpi4; default metaedge). "
        "Without --tracker the default is empty, which plain host:port clients expect",
    )
    p.add_argument("--custom-addr", help="address the tracker hands to clients (default: as the tracker sees us)")
    p.add_argument("--load-library", help="extra shared libraries to load, colon separated")
    p.add_argument("--mode", choices=("inline", "fork"), default="inline", help="session model (see module doc)")
    p.add_argument("--tracker-only", action="store_true", help="run the tracker instead of a server")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(asctime)s rpc_server %(levelname)s %(message)s")
    if args.tracker_only and args.port == 9090:
        args.port = 9190  # TVM's conventional tracker port
    if args.port_end is None:
        args.port_end = args.port + 100
    if args.tracker_only:
        serve_tracker(args.host, args.port, args.port_end)
        return 0
    tracker = _parse_addr(args.tracker) if args.tracker else None
    if args.key is None:
        args.key = "metaedge" if tracker else ""
    serve(args.host, args.port, args.port_end, args.key, tracker, args.custom_addr, args.load_library, args.mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
