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
    (tmp_path / "usernet.py").write_text(
        "import torch.nn as nn\ndef make():\n    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))\n"
    )
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


# Every bad setting is refused when the config is built (or, for a MACs budget, right after the
# data is loaded), in-process in well under 3 s and before anything is trained or written.
_TINY = ["--model", "resnet20", "--width-mult", "0.5", "--input-size", "8", "--epochs", "1", "--target", "none"]


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--quant", "w3a8"], "3-bit weights are not supported"),
        (["--quant", "int8"], "not of the form wKaM"),
        (["--quant", "w8a4"], "4-bit activations"),
        (["--quantizer", "ptq", "--quant", "w4a8"], "ptq gives int8 weights"),
        (["--target", "rpi5"], "unknown target 'rpi5'"),
        (["--target", "cuda:90"], "bad CUDA arch"),
        (["--prune-macs", "0"], "--prune-macs 0 leaves no MACs"),
        (["--prune-macs", "1"], "keeps the whole baseline"),
        (["--prune-macs", "half"], "cannot read the MACs budget"),
        (["--prune-macs", "900M"], "not below the baseline"),
        (["--prune-macs", "1000"], "below the narrowest network"),
        (["--prune-macs", "0.05"], "below the narrowest network"),
        (["--prune-latency", "3", "--target", "x86"], "has no unit"),
        (["--prune-latency=-2ms", "--target", "x86"], "negative"),
        (["--prune-latency", "fast", "--target", "x86"], "not like 2ms"),
        (["--prune-latency", "2ms"], "needs a target"),
        (["--backend", "tvmm"], "unknown backend tvmm"),
        (["--backend", "tvm,onnxrt"], "unknown backend onnxrt"),
        (["--device", "nohost"], "bad device 'nohost'"),
        (["--device", "host:90/"], "bad device"),
        (["--warmup", "-1"], "bad timing config"),
        (["--tune-trials", "-3"], "not a trial count"),
        (["--epochs", "-1"], "negative"),
        (["--parity-atol", "0"], "must be positive"),
        (["--quant-kd", "2"], "outside [0, 1]"),
        (["--quantizer", "ste", "--quant-meta-net", "multifc"], "picks MetaQuant's meta network"),
        (["--quant-layer-bits", "first=3"], "bits"),
        (["--width-mult", "0"], "must be positive"),
        (["--pruner", "none"], "nothing to spend the budget on"),
        (["--prune-rank-check", "1"], "ranks a single structure"),
        (["--pruner", "uniform", "--prune-rank-check", "10"], "trains none"),
        (["--prune-macs", "off", "--prune-rank-check", "10"], "trains none"),
        (["--lowrank", "tucker", "--prune-macs", "off"], "needs a MACs budget"),
    ],
)
def test_bad_setting_is_refused_before_any_work(flags, needle, tmp_path, capsys):
    import time

    from metaedge.cli.main import main

    out, cache = tmp_path / "out", tmp_path / "cache"
    t0 = time.perf_counter()
    code = main(["compress", *_TINY, *flags, "--out", str(out), "--cache-dir", str(cache), "--quiet"])
    seconds = time.perf_counter() - t0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("metaedge: error:"), err
    assert needle in err[0], err[0]
    # a MACs budget is priced on the model at the data's size: it loads the data first (cold imports included)
    assert seconds < (15.0 if "not below" in needle or "narrowest" in needle else 3.0), f"{flags} took {seconds:.1f} s"
    assert not cache.exists() and not (out / "manifest.json").exists()  # nothing trained, nothing written


def test_negative_timing_in_a_config_file(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[timing]\nwarmup = -1\n")
    _assert_one_line_error(run_cli("compress", "--config", str(cfg), "--out", str(tmp_path / "o")), "c.toml [timing]", "warmup >= 0")


def test_bad_setting_exits_fast_as_a_process(tmp_path):
    """The whole process, torch import included (about 3 s on a busy 2-core box), stays far from a training run."""
    import time

    t0 = time.perf_counter()
    proc = run_cli("compress", "--quant", "w3a8", "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c"))
    _assert_one_line_error(proc, "3-bit weights")
    assert time.perf_counter() - t0 < 20 and not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["compile", "--target", "x86", "--warmup", "-1"], "is negative"),
        (["compile", "--target", "x86", "--repeats", "0"], "must be at least 1"),
        (["compile", "--target", "x86", "--tune-trials", "-1"], "is negative"),
        (["compile", "nowhere.txt", "--target", "x86"], "neither an artifact directory"),
        (["compile", "missing-dir", "--target", "x86"], "neither an artifact directory"),
        (["tune", "--target", "x86", "--trials", "0"], "trials"),
        (["tune", "x.txt", "--target", "x86"], "does not exist"),
        (["compile", "--target", "rpi5"], "unknown target"),
        (["deploy", "--target", "rpi5"], "rpi5"),
        (["profile"], "model"),
        (["export", "resnet20", "--input-size", "0"], "must be at least 1"),
        (["info", "mobilenetv3_large"], "unknown model"),
        (["targets", "--file", "missing.toml"], "missing.toml"),
        (["nosuchcommand"], "invalid choice"),
        (["deploy", "--target", "x86", "--threads", "0"], "must be at least 1"),
        (["profile", "x.onnx", "--repeats", "0"], "must be at least 1"),
        (["compress", "--config", "."], "is a directory"),
        (["compress", "--config", "missing.toml"], "does not exist"),
        (["compress", "--data", "missing.npz"], "--data digits"),
    ],
)
def test_other_commands_error_paths(argv, needle, tmp_path, capsys, monkeypatch):
    from metaedge.cli.main import main

    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors exit through _Parser.error
        code = exc.code
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("metaedge: error"), err
    assert needle in err[0], err[0]
