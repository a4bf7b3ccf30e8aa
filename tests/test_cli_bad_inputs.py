"""Bad input gets one line naming the problem and the fix, exit code 2, no traceback."""
import pickle

import pytest

from conftest import run_cli


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/metaedge-pwned",))


def _assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("metaedge: error:")
    for n in needles:
        assert n in lines[0], lines[0]


def test_missing_weights_file(tmp_path):
    _assert_one_line_error(run_cli("info", "resnet20", "--weights", str(tmp_path / "nope.pt")), "nope.pt", "does not exist")


def test_pickle_carrying_code_is_refused(tmp_path):
    import os

    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as fh:
        pickle.dump({"conv.weight": _Evil()}, fh)
    if os.path.exists("/tmp/metaedge-pwned"):
        os.remove("/tmp/metaedge-pwned")
    proc = run_cli("compress", "--weights", str(evil), "--model", "resnet20", "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c"))
    _assert_one_line_error(proc, "evil.pt", "would run code", "state_dict")
    assert not os.path.exists("/tmp/metaedge-pwned")


def test_file_that_is_not_onnx(tmp_path):
    bogus = tmp_path / "model.onnx"
    bogus.write_text("definitely not protobuf")
    _assert_one_line_error(run_cli("profile", str(bogus)), "model.onnx", "not a valid ONNX model")


def test_missing_onnx_file(tmp_path):
    _assert_one_line_error(run_cli("profile", str(tmp_path / "none.onnx")), "none.onnx", "does not exist")


def test_unknown_model_name():
    _assert_one_line_error(run_cli("info", "mobilenetv3_large"), "unknown model", "metaedge info --list")


def test_wrong_input_shape_for_onnx(tiny_onnx):
    _, path = tiny_onnx
    _assert_one_line_error(run_cli("profile", str(path), "--input-shape", "1,3,224,224"), "does not match", "--input-shape 1,1,8,8")


def test_wrong_input_shape_for_model(tmp_path):
    (tmp_path / "usernet.py").write_text("import torch.nn as nn\ndef make():\n    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))\n")
    proc = run_cli("info", "usernet:make", "--in-chans", "1", "--input-size", "8", env={"PYTHONPATH": str(tmp_path)})
    _assert_one_line_error(proc, "does not accept input of shape (1, 1, 8, 8)", "--in-chans")


@pytest.mark.parametrize("budget", ["-0.5", "-20M"])
def test_negative_budget(budget, tmp_path):
    _assert_one_line_error(run_cli("compress", f"--prune-macs={budget}", "--out", str(tmp_path)), "negative")


def test_bad_config_key(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('model = "resnet20"\n[train]\nepoch = 3\n')
    _assert_one_line_error(run_cli("compress", "--config", str(cfg)), "c.toml", "unknown key(s) epoch", "epochs")


def test_debug_shows_traceback(tmp_path):
    proc = run_cli("--debug", "info", "resnet20", "--weights", str(tmp_path / "nope.pt"))
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_help_everywhere():
    for cmd in ((), ("compress",), ("info",), ("export",), ("profile",)):
        proc = run_cli(*cmd, "--help")
        assert proc.returncode == 0 and "usage: metaedge" in proc.stdout
