"""PruningNet training and candidate scoring data-parallel: 2 processes (gloo) under torchrun."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_agree(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this Python")
    worker = Path(__file__).with_name("_prune_ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [torchrun, "--nproc_per_node=2", "--master-addr=127.0.0.1", f"--master-port={_free_port()}", str(worker), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["world"] == r1["world"] == 2
    assert r0["widths"] == r1["widths"] and len(r0["widths"]) > 4  # same width vector every step
    assert abs(r0["digest"] - r1["digest"]) < 1e-6  # DDP kept the replicas identical
    assert r0["acc"] == r1["acc"] and r0["loss"] == r1["loss"]  # all-reduced scores
    assert (tmp_path / "pn.pt").exists()  # written by rank 0 only
    assert not list(tmp_path.glob(".pn.pt.*"))
    assert r0["pruned"] == r1["pruned"] and r0["macs"] == r1["macs"]  # prune_model: one search, shared
    assert (tmp_path / "prune" / "search.jsonl").exists() and (tmp_path / "prune" / "prune_result.json").exists()
    lines = (tmp_path / "prune" / "search.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines))  # only rank 0 appended
