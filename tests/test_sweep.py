"""`metaedge sweep`: budgets x quant from one baseline and one PruningNet, the frontier, resume, pick."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import run_cli

from metaedge.errors import MetaedgeError
from metaedge.sweep.frontier import FrontierRow, pareto_front
from metaedge.sweep.pick import choose_point, copy_point


def _row(point, acc, ms):
    return FrontierRow(
        point=point,
        series="s",
        pruner="metapruning",
        budget="0.5",
        quant="off",
        test_acc=acc,
        latency_ms=ms,
        latency_source="x86/onnxruntime (local)",
        macs=1,
        params=1,
        onnx_bytes=1,
    )


def test_pareto_front_and_pick():
    rows = pareto_front([_row("a", 0.90, 1.0), _row("b", 0.95, 2.0), _row("c", 0.93, 2.5), _row("d", 0.90, 1.5), _row("e", 0.97, 4.0)])
    assert {r.point for r in rows if r.pareto} == {"a", "b", "e"}  # c: b is faster and better; d: a ties accuracy, faster
    assert choose_point(rows, max_ms=2.6).point == "b"
    assert choose_point(rows, min_acc=0.93).point == "b"
    assert choose_point(rows, min_acc=0.96).point == "e"
    with pytest.raises(MetaedgeError, match="no point runs within 0.500 ms"):
        choose_point(rows, max_ms=0.5)
    with pytest.raises(MetaedgeError, match="no point reaches 99.00%"):
        choose_point(rows, min_acc=0.99)


def test_copy_point_never_clobbers_other_folders(tmp_path):
    src = tmp_path / "point"
    src.mkdir()
    (src / "manifest.json").write_text("{}")
    (src / "model.onnx").write_bytes(b"x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(MetaedgeError, match="not an artifact folder"):
        copy_point(src, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    dest = copy_point(src, tmp_path / "out")
    (src / "model.onnx").write_bytes(b"y")
    copy_point(src, dest)  # a previous artifact is replaced whole
    assert (dest / "model.onnx").read_bytes() == b"y" and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--prune-macs", "0.5", "--pick", "1.5"], "has no unit"),
        (["--prune-macs", "0.5", "--pick-acc", "2"], "is not an accuracy"),
        (["--prune-macs", "0.5,-1"], "is negative"),
        (["--prune-macs", "0.5,0.5"], "repeats a value"),
        (["--prune-latency", "0.5"], "absolute latency budgets"),
        (["--prune-macs", "0.5", "--quant", "off,w9a8"], "9-bit weights"),
        (["--prune-macs", "0.5", "--pruner", "metapruning,magic"], "unknown sweep pruner"),
        (["--prune-macs", "0.5", "--target", "nowhere"], "unknown target"),
        (["--prune-macs", "0.5", "--pick", "1ms", "--out", "/etc"], "not an artifact folder"),
    ],
)
def test_bad_values_fail_in_one_line_before_any_work(tmp_path, capsys, flags, message):
    from metaedge.cli.main import main

    assert main(["sweep", *flags, "--sweep-dir", str(tmp_path / "sweep"), "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "cache").exists()


def test_cli_bad_value_exits_2_with_one_line(tmp_path):
    proc = run_cli("sweep", "--prune-macs", "0.5", "--pick", "fast", "--sweep-dir", str(tmp_path / "sweep"), timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "--pick 'fast'" in proc.stderr
    assert not (tmp_path / "sweep").exists()


TINY = [
    "--model",
    "resnet20",
    "--width-mult",
    "0.5",
    "--input-size",
    "8",
    "--train-subset",
    "256",
    "--epochs",
    "1",
    "--prune-macs",
    "0.8,0.5",
    "--quant",
    "off",
    "--target",
    "x86",
    "--backend",
    "onnxruntime",
    "--repeats",
    "5",
    "--warmup",
    "1",
    "--quiet",
]


def test_unreachable_budget_fails_before_any_point_runs(tmp_path, capsys):
    from metaedge.cli.main import main

    # width 0.5 at 8x8 with channel multiple 8: the narrowest network keeps ~77% of the MACs
    args = [a if a != "0.8,0.5" else "0.8,0.1" for a in TINY]
    assert main(["sweep", *args, "--sweep-dir", str(tmp_path / "sweep"), "--cache-dir", str(tmp_path / "cache")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "below the narrowest network" in err[0], err
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "cache").exists()  # nothing trained, nothing written


def test_sweep_two_budgets_one_pruningnet_resume_after_kill_and_pick(tmp_path):
    sweep, cache, picked = tmp_path / "sweep", tmp_path / "cache", tmp_path / "picked"
    args = [*TINY, "--sweep-dir", str(sweep), "--cache-dir", str(cache)]
    first = "metapruning-macs0.8-off"
    # 1. killed (SIGKILL, no clean-up) as soon as the first pruned point is recorded
    env = {"OMP_NUM_THREADS": "1", **os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "metaedge.cli.main", "sweep", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        try:
            state = json.loads((sweep / "sweep.json").read_text())["points"][first]["state"]
        except (OSError, ValueError, KeyError):
            state = None
        if state == "computed":
            break
        time.sleep(0.5)
    assert proc.poll() is None, f"the sweep ended before it could be killed:\n{proc.stdout.read()[-3000:]}"
    proc.send_signal(signal.SIGKILL)
    killed_log = proc.communicate()[0]
    summary = json.loads((sweep / "sweep.json").read_text())
    assert summary["points"]["baseline"]["state"] == "computed" and summary["points"]["metapruning-macs0.5-off"]["state"] == "pending"
    (pn,) = summary["pruningnets"]
    pn_mtime = os.stat(pn).st_mtime_ns
    finished = {p: json.loads((sweep / "points" / p / "manifest.json").read_text())["run"]["finished_utc"] for p in ("baseline", first)}

    # 2. the same sweep again, the rest in a worker process, then the pick
    proc = run_cli("sweep", *args, "--jobs", "2", "--pick-acc", "0.05", "--out", str(picked), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"{first}: reused" in proc.stdout and "baseline: reused" in proc.stdout and "metapruning-macs0.5-off: running in a worker" in proc.stdout
    for p, stamp in finished.items():
        assert json.loads((sweep / "points" / p / "manifest.json").read_text())["run"]["finished_utc"] == stamp
    # the PruningNet was trained once: one checkpoint, untouched by the rerun, named by both pruned points
    assert (killed_log + proc.stdout).count("training the shared PruningNet") == 1 and "reusing the shared PruningNet" in proc.stdout
    summary = json.loads((sweep / "sweep.json").read_text())
    assert summary["pruningnets"] == [pn] and os.stat(pn).st_mtime_ns == pn_mtime
    assert list(cache.rglob("pruningnet*.pt")) == [Path(pn)]
    assert {p["state"] for p in summary["points"].values()} == {"computed", "reused"} and len(summary["points"]) == 3

    # two deployable pruned points, each a full artifact folder within its budget and behind the parity gate
    for budget in ("0.8", "0.5"):
        m = json.loads((sweep / "points" / f"metapruning-macs{budget}-off" / "manifest.json").read_text())
        assert m["stages"]["prune"]["macs"] <= float(budget) * m["stages"]["baseline"]["macs"]
        assert m["export"]["parity"]["passed"] and m["compiled"]["x86"]["chosen"] == "onnxruntime"
        assert m["stages"]["prune"]["pruningnet"] == pn
    rows = list(csv.DictReader((sweep / "frontier.csv").open()))
    assert [r["point"] for r in rows] == sorted((r["point"] for r in rows), key=lambda p: float(next(x["latency_ms"] for x in rows if x["point"] == p)))
    assert {r["point"] for r in rows} == set(summary["points"]) and any(r["pareto"] == "True" for r in rows)
    assert all(r["latency_source"] == "x86/onnxruntime (local)" for r in rows)
    assert (sweep / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    assert "test accuracy vs measured latency on x86" in proc.stdout
    # --pick-acc: the fastest point at >= 5% test accuracy, copied whole
    best = min((r for r in rows if float(r["test_acc"]) >= 0.05), key=lambda r: float(r["latency_ms"]))
    assert json.loads((picked / "manifest.json").read_text()) == json.loads((sweep / "points" / best["point"] / "manifest.json").read_text())
    assert f"picked {best['point']}" in proc.stdout and (picked / "model.onnx").is_file()


def test_plan_shares_one_pruningnet_band_across_budgets(tmp_path):
    from metaedge.config import PipelineConfig
    from metaedge.pipeline import _shared_band
    from metaedge.sweep.config import SweepConfig
    from metaedge.sweep.plan import plan_points, point_config, point_groups

    cfg = SweepConfig(
        base=PipelineConfig(targets=("x86",)), budget_kind="latency", budgets=("2ms", "500us"), quants=("off", "w8a8"), pruners=("metapruning", "uniform")
    )
    points = plan_points(cfg)
    assert points[0].name == "baseline" and len(points) == 1 + 2 * 2 * 2
    assert [len(g) for g in point_groups(points)] == [1, 2, 2, 2, 2]  # one group per pruner and budget: its quant variants in turn
    mp = [point_config(cfg, p, tmp_path) for p in points if p.pruner == "metapruning"]
    assert {c.pruningnet_budgets for c in mp} == {("2ms", "500us")} and {str(c.prune_latency) for c in mp} == {"2ms", "500us"}
    assert len({_shared_band(c, 1) for c in mp}) == 1  # one band, so one shared PruningNet checkpoint
    assert _shared_band(mp[0], 1) == pytest.approx((0.45, 2.0))  # Band.around: 10% under the smallest budget, up to the largest
    uniform = point_config(cfg, points[-1], tmp_path)
    assert uniform.pruningnet_budgets is None and uniform.pruner == "uniform" and uniform.out == str(tmp_path / "points" / points[-1].name)
    base = point_config(cfg, points[0], tmp_path)
    assert not base.prune_enabled and not base.latency_budget_enabled and not base.quant_enabled
    with pytest.raises(MetaedgeError, match="serves --pruner metapruning alone"):
        PipelineConfig(pruner="uniform", pruningnet_budgets=("0.5",))
    # the rank diagnostic follows MetaPruning's points only: the baseline and uniform points train no PruningNet
    checked = replace(cfg, base=replace(cfg.base, prune_rank_check=10))
    assert {point_config(checked, p, tmp_path).prune_rank_check for p in points} == {0, 10}
    assert all(point_config(checked, p, tmp_path).prune_rank_check == (10 if p.pruner == "metapruning" else 0) for p in points)
    with pytest.raises(MetaedgeError, match="is a fraction"):
        PipelineConfig(targets=("x86",), prune_macs=None, prune_latency="2ms", pruningnet_budgets=("2ms", "0.5"))
