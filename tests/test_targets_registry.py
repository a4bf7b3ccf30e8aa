"""Target registry: built-ins, TVM target objects, CUDA arch override, user targets from TOML, CLI."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from metaedge.errors import MetaedgeError
from metaedge.targets import registry
from metaedge.targets.registry import Target, get_target, list_targets, load_targets_toml

BUILTINS = ["x86", "arm64", "rpi4", "cuda", "jetson-nano", "jetson-orin-nano", "jetson-xavier"]


@pytest.fixture(autouse=True)
def _clean_user_targets(monkeypatch):
    monkeypatch.setattr(registry, "_USER", {})
    monkeypatch.setattr(registry, "_ENV_LOADED", set())
    monkeypatch.delenv("METAEDGE_TARGETS", raising=False)


def test_builtins_listed_in_order():
    assert [t.name for t in list_targets()] == BUILTINS
    for t in list_targets():
        assert t.family in registry.FAMILIES and t.measurement in registry.MEASUREMENTS
        assert t.backends and t.docker_base


def test_target_is_frozen_and_hashable():
    t = get_target("rpi4")
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.name = "x"  # type: ignore[misc]
    assert hash(t) == hash(get_target("rpi4"))


def test_builtin_tvm_targets():
    x86 = get_target("x86").tvm()
    from tvm.target.codegen import llvm_get_system_cpu

    assert x86.kind.name == "llvm" and str(x86.attrs["mcpu"]) == str(llvm_get_system_cpu())
    rpi = get_target("rpi4").tvm()
    assert str(rpi.attrs["mcpu"]) == "cortex-a72" and "aarch64" in str(rpi.attrs["mtriple"])
    arm = get_target("arm64")
    assert arm.arch == "aarch64" and arm.cross_compiler == "aarch64-linux-gnu-g++"
    orin = get_target("jetson-orin-nano").tvm()
    assert orin.kind.name == "cuda" and str(orin.attrs["arch"]) == "sm_87"
    assert "aarch64" in str(orin.host.attrs["mtriple"])
    nano = get_target("jetson-nano").tvm()
    assert str(nano.attrs["arch"]) == "sm_53" and nano.host is not None  # the tag has no host; we add one


def test_cuda_arch_override():
    assert str(get_target("cuda").tvm().attrs["arch"]) == registry.DEFAULT_CUDA_ARCH
    t = get_target("cuda:sm_90")
    assert t.name == "cuda:sm_90" and str(t.tvm().attrs["arch"]) == "sm_90"
    assert str(get_target("cuda", arch="sm_86").tvm().attrs["arch"]) == "sm_86"
    with pytest.raises(MetaedgeError, match="cuda:sm_90"):
        get_target("cuda:ampere")


def test_unknown_target_names_choices():
    with pytest.raises(MetaedgeError) as exc:
        get_target("pi5")
    assert "rpi4" in str(exc.value) and "METAEDGE_TARGETS" in str(exc.value)


def test_runs_here():
    import platform

    assert get_target("x86").runs_here() == (platform.machine() == "x86_64")
    assert not get_target("rpi4").runs_here() or platform.machine() == "aarch64"


def test_toml_targets(tmp_path, monkeypatch):
    f = tmp_path / "targets.toml"
    f.write_text("""
[targets.lab-pi]
based_on = "rpi4"
description = "the Pi on the lab bench"

[targets.my-box]
family = "x86"
description = "an x86 box with AVX-512"
tvm_target = { kind = "llvm", mcpu = "skylake-avx512" }
backends = ["tvm", "onnxruntime"]
measurement = "rpc"
""")
    got = load_targets_toml(f)
    assert [t.name for t in got] == ["lab-pi", "my-box"]
    pi = get_target("lab-pi")
    assert pi.tvm_target == "raspberry-pi/4b-aarch64" and pi.description == "the Pi on the lab bench"
    box = get_target("my-box")
    assert box.backends == ("tvm", "onnxruntime") and str(box.tvm().attrs["mcpu"]) == "skylake-avx512"
    assert [t.name for t in list_targets()][-2:] == ["lab-pi", "my-box"]
    # the environment variable route
    monkeypatch.setattr(registry, "_USER", {})
    monkeypatch.setenv("METAEDGE_TARGETS", str(f))
    assert get_target("lab-pi").family == "arm64"


@pytest.mark.parametrize(
    "text,needle",
    [
        ("[targets.a\nfamily = 1", "not valid TOML"),
        ("[other]\nx = 1", "no [targets.<name>] tables"),
        ('[targets.a]\nfamily = "x86"', "missing"),
        ('[targets.a]\nfamily = "mips"\ndescription = "d"\ntvm_target = "x"', "family 'mips'"),
        ('[targets.a]\nbased_on = "nope"', "based_on 'nope'"),
        ('[targets.a]\nbased_on = "x86"\ncolour = "red"', "unknown keys"),
        ('[targets.a]\nbased_on = "x86"\nbackends = ["tflite"]', "backends"),
        ('[targets.a]\nbased_on = "x86"\nbackends = "tvm"', "must be a list"),
        ('[targets.a]\nfamily = "x86"\ndescription = "d"\ntvm_target = { mcpu = "x" }', "no `kind`"),
    ],
)
def test_bad_toml_names_file_and_fix(tmp_path, text, needle):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(MetaedgeError) as exc:
        load_targets_toml(f)
    msg = str(exc.value)
    assert str(f) in msg and needle in msg and ";" in msg  # problem; fix


def test_missing_toml_file(tmp_path):
    with pytest.raises(MetaedgeError, match="does not exist"):
        load_targets_toml(tmp_path / "nope.toml")


def test_cli_targets(tmp_path, capsys):
    from metaedge.cli import targets as cli

    ap = argparse.ArgumentParser()
    cli.add_parser(ap.add_subparsers(dest="cmd"))
    assert cli.run(ap.parse_args(["targets", "--json"])) == 0
    names = [t["name"] for t in json.loads(capsys.readouterr().out)]
    assert names == BUILTINS
    f = tmp_path / "t.toml"
    f.write_text('[targets.lab-pi]\nbased_on = "rpi4"\n')
    assert cli.run(ap.parse_args(["targets", "--file", str(f)])) == 0
    out = capsys.readouterr().out
    assert "lab-pi" in out and "jetson" in out


def test_target_to_dict_roundtrip_fields():
    d = get_target("rpi4").to_dict()
    assert d["tvm_target"] == "raspberry-pi/4b-aarch64" and d["backends"] == ["onnxruntime", "tvm"]
    assert Target(**{**d, "backends": tuple(d["backends"])}) == get_target("rpi4")
