"""A corpus of broken files through every CLI command that takes a file: exit 2, one line on stderr.

Run in-process through ``metaedge.cli.main.main`` (a traceback would fail the test as an exception),
with settings that would finish in seconds should a broken file ever be accepted.
"""

import gzip
import json
import os
import zipfile

import numpy as np
import pytest
import torch

from conftest import TINY_MODEL, run_cli
from metaedge.cli.main import main

# compress flags that make an accepted file cost seconds, not a training run
_FAST = [
    *TINY_MODEL,
    "--epochs",
    "0",
    "--prune-macs",
    "off",
    "--quant",
    "off",
    "--target",
    "none",
    "--repeats",
    "1",
    "--warmup",
    "0",
    "--quiet",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("broken")
    rng = np.random.default_rng(0)
    files = {
        "empty": d / "empty.pt",
        "random": d / "random.pt",
        "truncated_zip": d / "truncated.pt",
        "zip_not_torch": d / "notes.pt",
        "torch_tensor": d / "tensor.pt",
        "torch_list": d / "list.pt",
        "onnx_text": d / "model.onnx",
        "onnx_empty": d / "empty.onnx",
        "onnx_random": d / "random.onnx",
        "pt2_random": d / "model.pt2",
        "toml_bad": d / "bad.toml",
        "toml_random": d / "random.toml",
        "yaml_bad": d / "bad.yaml",
        "npz_random": d / "random.npz",
        "npz_empty": d / "empty.npz",
        "npz_nan": d / "nan.npz",
        "npz_float_labels": d / "float_labels.npz",
        "npz_one_class": d / "one_class.npz",
        "idx_bad": d / "idx",
        "artifact_bad_manifest": d / "artifact",
        "artifact_empty_manifest": d / "artifact_empty",
        "pem_random": d / "ca.pem",
    }
    files["empty"].write_bytes(b"")
    files["random"].write_bytes(rng.bytes(4096))
    torch.save({"w": torch.zeros(3)}, files["truncated_zip"])
    files["truncated_zip"].write_bytes(files["truncated_zip"].read_bytes()[:200])
    with zipfile.ZipFile(files["zip_not_torch"], "w") as zf:
        zf.writestr("notes.txt", "hello")
    torch.save(torch.zeros(3), files["torch_tensor"])
    torch.save([torch.zeros(3)], files["torch_list"])
    files["onnx_text"].write_text("definitely not protobuf")
    files["onnx_empty"].write_bytes(b"")
    files["onnx_random"].write_bytes(rng.bytes(2048))
    files["pt2_random"].write_bytes(rng.bytes(2048))
    files["toml_bad"].write_text("model = \n[train\n")
    files["toml_random"].write_bytes(rng.bytes(512))
    files["yaml_bad"].write_text("model: [resnet20\n  - x: :\n")
    files["npz_random"].write_bytes(rng.bytes(1024))
    files["npz_empty"].write_bytes(b"")
    x = rng.random((60, 8, 8)).astype(np.float32)
    x_nan = x.copy()
    x_nan[3, 2, 2] = np.nan
    np.savez(files["npz_nan"], x=x_nan, y=np.repeat(np.arange(3), 20))
    np.savez(files["npz_float_labels"], x=x, y=np.repeat(np.arange(3), 20) + 0.5)
    np.savez(files["npz_one_class"], x=x, y=np.zeros(60, dtype=np.int64))
    files["idx_bad"].mkdir()
    (files["idx_bad"] / "train-images-idx3-ubyte").write_bytes(rng.bytes(300))
    (files["idx_bad"] / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(rng.bytes(100)))
    for key, text in (("artifact_bad_manifest", "{not json"), ("artifact_empty_manifest", "")):
        files[key].mkdir()
        (files[key] / "manifest.json").write_text(text)
        (files[key] / "model.onnx").write_text("not protobuf")
    files["pem_random"].write_bytes(rng.bytes(256))
    return files


def _cases():
    """(id, argv builder) for every command and every file argument it takes."""
    weights = ["empty", "random", "truncated_zip", "zip_not_torch", "torch_tensor", "torch_list"]
    onnx = ["onnx_text", "onnx_empty", "onnx_random", "empty", "random"]
    data = ["npz_random", "npz_empty", "npz_nan", "npz_float_labels", "npz_one_class", "idx_bad"]
    configs = ["toml_bad", "toml_random", "yaml_bad"]
    artifacts = ["artifact_bad_manifest", "artifact_empty_manifest"]
    cases = []
    for w in weights:
        cases.append((f"compress-weights-{w}", lambda f, o, w=w: ["compress", "--weights", str(f[w]), *_FAST, "--out", o, "--cache-dir", o]))
        cases.append((f"info-weights-{w}", lambda f, o, w=w: ["info", "resnet20", "--weights", str(f[w])]))
        cases.append((f"export-weights-{w}", lambda f, o, w=w: ["export", "resnet20", "--weights", str(f[w]), "--out", f"{o}/m.onnx"]))
    for c in configs:
        cases.append((f"compress-config-{c}", lambda f, o, c=c: ["compress", "--config", str(f[c]), *_FAST, "--out", o, "--cache-dir", o]))
        cases.append((f"targets-file-{c}", lambda f, o, c=c: ["targets", "--file", str(f[c])]))
        cases.append((f"compile-targets-file-{c}", lambda f, o, c=c: ["compile", str(f["onnx_text"]), "--target", "x86", "--targets-file", str(f[c])]))
        cases.append((f"tune-targets-file-{c}", lambda f, o, c=c: ["tune", str(f["onnx_text"]), "--target", "x86", "--targets-file", str(f[c])]))
    for d in data:
        cases.append((f"compress-data-{d}", lambda f, o, d=d: ["compress", "--data", str(f[d]), *_FAST, "--out", o, "--cache-dir", o]))
        cases.append(
            (
                f"export-data-{d}",
                lambda f, o, d=d: ["export", "resnet20", "--width-mult", "0.5", "--input-size", "8", "--data", str(f[d]), "--out", f"{o}/m.onnx"],
            )
        )
    for m in ("pt2_random", "empty"):
        cases.append(
            (
                f"compress-model-{m}",
                lambda f, o, m=m: [
                    "compress",
                    "--model",
                    str(f[m].with_suffix(".pt2") if m == "pt2_random" else f["pt2_random"]),
                    *_FAST[2:],
                    "--out",
                    o,
                    "--cache-dir",
                    o,
                ],
            )
        )
        cases.append((f"info-model-{m}", lambda f, o, m=m: ["info", str(f["pt2_random"])]))
        cases.append((f"export-model-{m}", lambda f, o, m=m: ["export", str(f["pt2_random"]), "--out", f"{o}/m.onnx"]))
    for x in onnx:
        cases.append((f"profile-{x}", lambda f, o, x=x: ["profile", str(f[x])]))
        cases.append((f"compile-{x}", lambda f, o, x=x: ["compile", str(f[x]), "--target", "x86", "--backend", "onnxruntime", "--out", o]))
        cases.append((f"tune-{x}", lambda f, o, x=x: ["tune", str(f[x]), "--target", "x86", "--trials", "1", "--tuning-dir", o]))
    # sweep takes the same files as compress; its first point (the baseline) must fail on them the same way
    sweep = ["sweep", "--prune-macs", "0.5", "--quant", "off", *_FAST[:8], "--target", "none"]
    for w in ("random", "zip_not_torch"):
        cases.append((f"sweep-weights-{w}", lambda f, o, w=w: [*sweep, "--weights", str(f[w]), "--sweep-dir", o, "--cache-dir", o]))
    for c in configs:
        cases.append((f"sweep-config-{c}", lambda f, o, c=c: [*sweep, "--config", str(f[c]), "--sweep-dir", o, "--cache-dir", o]))
    for d in ("npz_random", "npz_nan", "npz_one_class"):
        cases.append((f"sweep-data-{d}", lambda f, o, d=d: [*sweep, "--data", str(f[d]), "--sweep-dir", o, "--cache-dir", o]))
    for a in artifacts:
        cases.append((f"profile-{a}", lambda f, o, a=a: ["profile", str(f[a])]))
        cases.append((f"compile-{a}", lambda f, o, a=a: ["compile", str(f[a]), "--target", "x86", "--backend", "onnxruntime"]))
        cases.append((f"tune-{a}", lambda f, o, a=a: ["tune", str(f[a]), "--target", "x86", "--trials", "1", "--tuning-dir", o]))
        cases.append((f"deploy-{a}", lambda f, o, a=a: ["deploy", "--target", "x86", "--artifact", str(f[a]), "--out", f"{o}/bundle"]))
    cases.append(
        (
            "deploy-ca-cert-random",
            lambda f, o: [
                "deploy",
                "--target",
                "x86",
                "--artifact",
                str(f["artifact_bad_manifest"]),
                "--ca-cert",
                str(f["pem_random"]),
                "--out",
                f"{o}/bundle",
            ],
        )
    )
    return cases


CASES = _cases()


@pytest.mark.parametrize("build", [b for _, b in CASES], ids=[i for i, _ in CASES])
def test_broken_file_is_one_line_exit_2(build, corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    argv = build(corpus, str(tmp_path / "o"))
    assert main(argv) == 2, argv
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("metaedge: error: "), err
    assert "Traceback" not in err[0]


def test_random_bytes_are_not_called_a_pickle(corpus, capsys):
    assert main(["info", "resnet20", "--weights", str(corpus["random"])]) == 2
    err = capsys.readouterr().err
    assert "not a torch archive" in err and "would run code" not in err


@pytest.mark.parametrize(
    "key,needle", [("npz_nan", "NaN"), ("npz_float_labels", "labels must be integers"), ("npz_one_class", "only 1 class"), ("torch_tensor", "not a state dict")]
)
def test_the_line_names_the_problem(key, needle, corpus, tmp_path, capsys):
    flag = "--weights" if key.startswith("torch") else "--data"
    assert main(["compress", flag, str(corpus[key]), *_FAST, "--out", str(tmp_path), "--cache-dir", str(tmp_path)]) == 2
    assert needle in capsys.readouterr().err


def test_subprocess_exit_code_and_no_traceback(corpus, tmp_path):
    """The same contract through the real entry point (exit status of the process, stderr only)."""
    proc = run_cli("compress", "--data", str(corpus["npz_random"]), *_FAST, "--out", str(tmp_path), "--cache-dir", str(tmp_path), env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not os.path.exists(tmp_path / "manifest.json") and not json.dumps(proc.stdout).count("baseline: training")
