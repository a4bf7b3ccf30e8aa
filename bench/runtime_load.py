"""Throughput and latency of the device runner under concurrent load, dynamic batching off vs on.

    .venv/bin/python bench/runtime_load.py [--models mobilenetv2_100,tiny | --artifact DIR] [--requests 3000]
                                           [--clients 64] [--max-batch 8] [--batch-timeout-ms 2] [--markdown PATH]

Starts the real runner (``python -m metaedge.deploy.runtime serve``) on 127.0.0.1 once per setting
and drives it with ``--clients`` keep-alive clients sending float32 ``.npy`` batches of one sample
(the loadgen in ``metaedge.deploy.runtime.loadgen``, raw sockets, same machine). Without
``--artifact`` it exports the ``--models`` (default: the demo's MobileNetV2 on 1x16x16 digits, and a
tiny CNN whose cost is all per-request overhead) with a dynamic batch axis to a temp dir. Prints requests/s, client-side p50/p99 and the server's own stage percentiles and mean batch.
The client shares the machine's cores with the server, so absolute numbers are a floor.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from metaedge.deploy.runtime.loadgen import Job, run_load, summary  # noqa: E402


MODELS = {  # name -> (zoo model or "tiny", input [C, H, W], why it is here)
    "mobilenetv2_100": ("mobilenetv2_100", (1, 16, 16), "the demo's default (digits 16x16): compute-bound"),
    "resnet20": ("resnet20", (3, 32, 32), "CIFAR-10 size"),
    "tiny": ("tiny", (3, 16, 16), "the tests' 2-conv CNN: per-request overhead dominates"),
}


def _tiny_cnn(channels: int):
    import torch

    return torch.nn.Sequential(
        torch.nn.Conv2d(channels, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, stride=2),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 10),
    )


def export_artifact(name: str, out: Path) -> Path:
    """ONNX with a dynamic batch axis plus the manifest the runner reads."""
    import torch

    from metaedge.deploy.export import export_onnx
    from metaedge.zoo import create_model

    zoo, (c, h, w), _ = MODELS[name]
    torch.manual_seed(0)
    model = _tiny_cnn(c) if zoo == "tiny" else create_model(zoo, num_classes=10, in_chans=c, input_size=h)
    out.mkdir(parents=True, exist_ok=True)
    export_onnx(model.eval(), torch.randn(1, c, h, w), out / "model.onnx")
    data = (out / "model.onnx").read_bytes()
    manifest = {
        "schema_version": 1,
        "model": {"name": name, "num_classes": 10, "input_shape": [1, c, h, w], "input_name": "input", "output_name": "logits"},
        "files": {"model.onnx": {"role": "onnx", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux), all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def npy_jobs(chw: tuple[int, ...], n: int, seed: int = 0) -> list[Job]:
    rng = np.random.default_rng(seed)
    jobs = []
    for _ in range(n):
        x = rng.standard_normal((1, *chw)).astype(np.float32)
        buf = io.BytesIO()
        np.save(buf, x, allow_pickle=False)
        jobs.append(Job(buf.getvalue(), "application/x-npy", "good", x))
    return jobs


def serve(artifact: Path, flags: list[str]) -> tuple[subprocess.Popen, str, int, str]:
    p = subprocess.Popen(
        [sys.executable, "-m", "metaedge.deploy.runtime", "serve", "--artifact", str(artifact), "--port", "0", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    line = p.stdout.readline()
    if "serving" not in line:
        p.kill()
        sys.exit(f"runner did not start: {line!r} {p.stderr.read()[-2000:]}")
    host, port = line.strip().rsplit("/", 1)[1].split(":")
    return p, host, int(port), line.strip()


def run_setting(artifact: Path, chw: tuple[int, ...], name: str, flags: list[str], args: argparse.Namespace) -> dict:
    p, host, port, line = serve(artifact, flags)
    try:
        run_load(host, port, npy_jobs(chw, 200, seed=1), args.clients)  # warm connections and caches
        jobs = npy_jobs(chw, args.requests)
        cpu0, t0 = _cpu_s(p.pid), time.perf_counter()
        replies = run_load(host, port, jobs, args.clients, timeout=60)
        stats = summary(jobs, replies, time.perf_counter() - t0)
        cpu_ms = (_cpu_s(p.pid) - cpu0) * 1e3 / len(jobs)
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as resp:
            metrics = json.loads(resp.read())
    finally:
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=30)
    stages = metrics["stages"]
    return {
        "setting": name,
        "flags": " ".join(flags) or "(none)",
        "backend": metrics["backend"],
        **stats,
        "server_cpu_ms_per_request": round(cpu_ms, 3),
        "server_exit": rc,
        "mean_batch": metrics["batches"]["mean_samples"],
        "server_p50_ms": {k: round(v["p50_ms"], 3) for k, v in stages.items() if v},
        "server_p99_ms": {k: round(v["p99_ms"], 3) for k, v in stages.items() if v},
    }


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"# bench/runtime_load.py ({time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores)",
        "",
        f"{args.requests} requests of one float32 sample (`.npy`) per model and setting, from {args.clients} concurrent "
        "keep-alive clients on 127.0.0.1; ONNX Runtime, 1 intra-op thread, default workers. Client and server share "
        "the machine's cores; server CPU is the runner process's user+system time per request.",
        "",
        "| model | batching | req/s | client p50 ms | client p99 ms | mean batch | server queue / inference / total p50 ms | server CPU ms/req | failed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p50 = r["server_p50_ms"]
        stages = " / ".join(str(p50.get(k, "-")) for k in ("queue_ms", "inference_ms", "total_ms"))
        lines.append(
            f"| {r['model']} | {r['setting']} | {r['requests_per_s']} | {r['good_p50_ms']} | {r['good_p99_ms']} | "
            f"{r['mean_batch']:.2f} | {stages} | {r['server_cpu_ms_per_request']} | {r['failed']} |"
        )
    on = next((r["flags"] for r in rows if r["setting"] == "on"), "")
    return "\n".join(lines + ["", f"Batching on: `{on}`."]) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mobilenetv2_100,tiny", help=f"comma list of: {', '.join(MODELS)}")
    ap.add_argument("--artifact", type=Path, default=None, help="serve this artifact directory instead (e.g. the demo's)")
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--batch-timeout-ms", type=float, default=2.0)
    ap.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
    args = ap.parse_args()
    settings = [("off", []), ("on", ["--max-batch", str(args.max_batch), "--batch-timeout-ms", str(args.batch_timeout_ms)])]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        arts = [args.artifact] if args.artifact else [export_artifact(m, Path(tmp) / m) for m in args.models.split(",")]
        for artifact in arts:
            manifest = json.loads((artifact / "manifest.json").read_text())
            chw = tuple(manifest["model"]["input_shape"][1:])
            for name, flags in settings:
                rows.append({"model": manifest["model"].get("name", "model"), **run_setting(artifact, chw, name, flags, args)})
    text = markdown(rows, args)
    print(text)
    for r in rows:
        print(json.dumps(r))
    if args.markdown:
        args.markdown.write_text(text)
    if any(r["failed"] or r["server_exit"] != 0 for r in rows):
        sys.exit("failed connections or a non-zero server exit: see above")


if __name__ == "__main__":
    main()
