"""CLI output piped to a file or a log: result lines are never wrapped, whatever the path or width."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from conftest import run_cli

pytest.importorskip("onnxruntime")

# Long enough that any wrapping console (rich's 80-column fallback, or a fixed width) would split it.
DEEP = Path(*(["a-rather-long-folder-name-for-the-output-of-this-run"] * 5))


@pytest.fixture(scope="module")
def long_path_onnx(tmp_path_factory) -> Path:
    from metaedge.deploy.export import export_onnx
    from metaedge.zoo import create_model

    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=4, in_chans=1, width_mult=0.25, input_size=8).eval()
    path = tmp_path_factory.mktemp("out") / DEEP / "model.onnx"
    path.parent.mkdir(parents=True)
    export_onnx(model, torch.randn(1, 1, 8, 8), path)
    return path


def _no_terminal_env() -> dict:
    # A narrow COLUMNS as a terminal-less CI might set: it must not narrow plain result lines.
    return {"COLUMNS": "40", "TERM": "dumb"}


def test_profile_result_line_is_whole_when_piped(long_path_onnx):
    r = run_cli("profile", str(long_path_onnx), "--repeats", "5", env=_no_terminal_env())
    assert r.returncode == 0, r.stderr
    pattern = re.compile(
        rf"^{re.escape(str(long_path_onnx))} input \(1, 1, 8, 8\) onnxruntime 1 thread\(s\): "
        r"p50 [\d.]+ ms, p90 [\d.]+ ms, p99 [\d.]+ ms over 5 runs$"
    )
    assert any(pattern.match(line) for line in r.stdout.splitlines()), r.stdout


def test_export_result_line_is_whole_when_piped(tmp_path):
    out = tmp_path / DEEP / "r20.onnx"
    r = run_cli("export", "resnet20", "--input-size", "8", "--num-classes", "3", "--in-chans", "1", "-o", str(out), env=_no_terminal_env())
    assert r.returncode == 0, r.stderr
    pattern = re.compile(rf"^wrote {re.escape(str(out))}: parity max abs err \S+, top-1 agreement [\d.]+ on \d+ inputs$")
    assert any(pattern.match(line) for line in r.stdout.splitlines()), r.stdout


def test_tables_keep_their_rules_when_piped():
    r = run_cli("targets", env=_no_terminal_env())
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    # Every row of the table is one line: each names a target and none is cut into continuation rows.
    assert any("rpi4" in line and "raspberry-pi/4b-aarch64" in line for line in lines), r.stdout
    widths = {len(line) for line in lines if line[:1] in "┏┃┡│└"}
    assert len(widths) == 1, r.stdout
