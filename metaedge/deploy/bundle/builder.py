"""Write (and optionally build) a Docker build context that serves one artifact on one target.

The bundle holds exactly: a Dockerfile for the target's family, requirements.txt, the torch-free
runner source, the model file plus a trimmed manifest, a README with the exact build/run commands
and bundle.json (the same facts, machine-readable). Never training data, state dicts or caches.
"""

from __future__ import annotations

import json
import os
import platform as host_platform
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from metaedge.artifacts import MANIFEST_NAME, atomic_write_json, atomic_write_text, file_sha256, load_manifest
from metaedge.deploy.bundle.targets import CUDA_TENSORRT_BASE, BundleTarget, resolve_target
from metaedge.errors import MetaedgeError

__all__ = ["Bundle", "BundleConfig", "build_bundle", "docker_reachable", "write_bundle"]

PORT = 8080
# The layer-0 modules copied beside deploy/runtime/ into every bundle; all torch-free
# (tests/test_runtime_runner.py runs them without torch, tests/test_architecture.py keeps the
# runtime from importing anything else).
RUNTIME_MODULES = ("errors.py", "latency.py", "artifacts.py")
_PKG_MARKER = '"""metaedge device runtime (bundle copy)."""\n'


@dataclass(frozen=True)
class BundleConfig:
    target: str
    artifact: Path
    out: Path
    backend: str | None = None  # default: the target family's first backend (see targets.py)
    base_image: str | None = None  # overrides the Dockerfile's ARG BASE_IMAGE default
    tag: str | None = None
    threads: int = 1
    force: bool = False  # replace an existing non-bundle output directory's contents
    ca_certs: tuple[Path, ...] = ()  # extra CA certificates trusted during the build (proxies)
    pins: tuple[str, ...] = ()  # requirement lines replacing the default for the same package, e.g. onnxruntime==1.20.1


@dataclass(frozen=True)
class Bundle:
    root: Path
    target: BundleTarget
    backend: str
    model_file: str
    image: str
    files: tuple[str, ...]
    commands: dict[str, str] = field(default_factory=dict)


def _pinned(dist: str, fallback: str) -> str:
    # Pin the device to the host's versions so host and container agree numerically.
    try:
        return f"{dist}=={metadata.version(dist)}"
    except metadata.PackageNotFoundError:
        return fallback


def _requirements(target: BundleTarget, backend: str) -> list[str]:
    if backend == "tensorrt":
        return []  # TensorRT, numpy and Pillow come from the NVIDIA base image / apt
    # numpy/Pillow floors only: the base's Python (3.10 on Ubuntu 22.04 CUDA images) decides.
    reqs = ["numpy>=1.24", "pillow>=10"]
    if backend == "onnxruntime":
        if target.gpu:
            reqs.append("onnxruntime-gpu>=1.18")
        else:
            reqs.append(_pinned("onnxruntime", "onnxruntime>=1.18"))
    elif backend == "tvm":
        reqs += [_pinned("apache-tvm", "apache-tvm>=0.27"), _pinned("apache-tvm-ffi", "apache-tvm-ffi")]
    return reqs


def _dist_name(req: str) -> str:
    return re.split(r"[<>=!~ ;\[]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _apply_pins(reqs: list[str], pins: tuple[str, ...]) -> list[str]:
    """Replace each default requirement by the user's pin for the same package (or add it)."""
    by_name = {_dist_name(p): p for p in pins}
    if any(not n for n in by_name):
        raise MetaedgeError(f"bad --pin in {list(pins)}", "use the form NAME==VERSION, e.g. onnxruntime==1.20.1")
    out = [by_name.pop(_dist_name(r), r) for r in reqs]
    return out + list(by_name.values())


def _pick_model(root: Path, manifest: dict[str, Any], target: BundleTarget, backend: str) -> Path:
    if backend == "tvm":
        compiled = (manifest.get("compiled") or {}).get(target.name) or {}
        tvm_rec = compiled.get("tvm")
        rec: dict[str, Any] = tvm_rec if isinstance(tvm_rec, dict) else {}
        if rec.get("parity_pass") is False:  # the compile stage's verdict under metaedge.parity's rule
            parity = rec.get("parity") or {}
            raise MetaedgeError(
                f"the TVM library for {target.name} failed the parity check at compile "
                f"(max abs error {parity.get('max_abs_err', float('nan')):.3g}, "
                f"top-1 agreement {parity.get('top1_agreement', float('nan')):.2f})",
                "recompile it (metaedge compile), or deploy with --backend onnxruntime",
            )
        rel = rec.get("path")
        for cand in filter(None, [rel, f"compiled/{target.name}/tvm/model.so"]):
            path = root / cand
            if path.is_file():
                return path
        raise MetaedgeError(
            f"{root} has no TVM library for target {target.name}", f"run `metaedge compile --target {target.name}` first, or deploy with --backend onnxruntime"
        )
    path = root / "model.onnx"
    if not path.is_file():
        raise MetaedgeError(f"{path} does not exist", "point --artifact at a directory written by `metaedge compress`")
    return path


def _trimmed_manifest(manifest: dict[str, Any], model_rel: str, model_path: Path, target: BundleTarget, backend: str) -> dict[str, Any]:
    keep = {k: v for k, v in manifest.items() if k not in ("files", "compiled", "deploy")}
    entry = (manifest.get("files") or {}).get(model_rel) or {"role": "model"}
    keep["files"] = {model_rel: {**entry, "bytes": model_path.stat().st_size, "sha256": file_sha256(model_path)}}
    compiled = (manifest.get("compiled") or {}).get(target.name)
    if compiled is not None:
        keep["compiled"] = {target.name: compiled}
    keep["deploy"] = {"target": target.name, "family": target.family, "platform": target.platform, "backend": backend, "model": model_rel}
    return keep


def _copy_tuning(model_path: Path, dest: Path) -> None:
    """Ship the MetaSchedule database the library was built with (its compile metadata names
    it), so the model can be rebuilt on the device with the same schedules."""
    meta = model_path.with_name("model.json")
    if not meta.is_file():
        return
    db = (json.loads(meta.read_text()).get("tuning") or {}).get("database")
    if not db or not (Path(db) / "database_tuning_record.json").is_file():
        return
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("database_workload.json", "database_tuning_record.json"):
        shutil.copy2(Path(db) / name, dest / name)


def _copy_runtime(dest: Path) -> list[Path]:
    """The runner and the three torch-free modules it imports, under runtime/metaedge/."""
    import metaedge
    import metaedge.deploy.runtime as rt

    pkg = Path(metaedge.__file__).parent
    written = []
    pkg_dest = dest / "metaedge"
    (pkg_dest / "deploy" / "runtime").mkdir(parents=True)
    for marker in (pkg_dest / "__init__.py", pkg_dest / "deploy" / "__init__.py"):
        marker.write_text(_PKG_MARKER)  # plain markers: the real package __init__s may import more
        written.append(marker)
    for name in RUNTIME_MODULES:
        written.append(Path(shutil.copy2(pkg / name, pkg_dest / name)))
    for src in sorted(Path(rt.__file__).parent.glob("*.py")):
        written.append(Path(shutil.copy2(src, pkg_dest / "deploy" / "runtime" / src.name)))
    return written


def _commands(target: BundleTarget, backend: str, image: str, root: Path, base_image: str | None) -> dict[str, str]:
    base_arg = f" --build-arg BASE_IMAGE={base_image}" if base_image else ""
    name = image.split("/")[-1].replace(":", "-")
    cmds: dict[str, str] = {}
    if target.platform == "linux/arm64":
        cmds["build"] = f"docker buildx build --platform linux/arm64{base_arg} -t {image} --load {root}"
        cmds["build_on_device"] = f"docker build{base_arg} -t {image} {root}"
        cmds["ship"] = f"docker save {image} | gzip | ssh USER@DEVICE 'gunzip | docker load'"
    else:
        cmds["build"] = f"docker build --platform {target.platform}{base_arg} -t {image} {root}"
    if target.family == "jetson":
        cmds["build"] = f"docker build{base_arg} -t {image} {root}   # on the Jetson itself"
        cmds.pop("build_on_device", None)
        gpu = "--runtime nvidia -v metaedge-trt-cache:/cache "
    elif target.family == "cuda":
        gpu = "--gpus all " + ("-v metaedge-trt-cache:/cache " if backend == "tensorrt" else "")
    else:
        gpu = ""
    cmds["run"] = f"docker run -d --name {name} --restart unless-stopped {gpu}-p {PORT}:{PORT} {image}"
    cmds["health"] = f"curl -s http://127.0.0.1:{PORT}/healthz"
    cmds["infer"] = f"curl -s -X POST -H 'Content-Type: application/x-npy' --data-binary @input.npy http://127.0.0.1:{PORT}/infer"
    cmds["metrics"] = f"curl -s http://127.0.0.1:{PORT}/metrics"
    cmds["run_once"] = f"docker run --rm {gpu}-v $PWD:/in {image} run /in/input.npy"
    return cmds


def _readme(b: Bundle, spec: dict[str, Any], base_default: str) -> str:
    c = b.commands
    shape = spec.get("input_shape", ["N", "C", "H", "W"])
    lines = [
        f"# metaedge bundle: {spec.get('name', 'model')} on {b.target.name}",
        "",
        f"- target `{b.target.name}` (family {b.target.family}, platform `{b.target.platform}`)",
        f"- backend `{b.backend}`, model file `artifact/{b.model_file}`",
        f"- base image `{base_default}` (override with `--build-arg BASE_IMAGE=...`)",
        f"- input `{spec.get('input_name', 'input')}` float32 [N, {', '.join(str(d) for d in shape[1:])}], "
        f"output `{spec.get('output_name', 'logits')}` [N, {spec.get('num_classes', 'K')}]",
        "",
        "## Build",
        "",
        "```sh",
        c["build"],
        "```",
    ]
    if "build_on_device" in c:
        lines += [
            "",
            "On an x86 host this needs QEMU binfmt (`docker run --privileged --rm tonistiigi/binfmt --install arm64`",
            "or `tools/docker/setup.sh`). Or build on the device itself, and/or ship the image:",
            "",
            "```sh",
            c["build_on_device"],
            c["ship"],
            "```",
        ]
    if b.target.family == "jetson":
        lines += [
            "",
            "Build on the Jetson: the base image must match its L4T release (`cat /etc/nv_tegra_release`).",
            "JetPack 4 (L4T r32, Jetson Nano) ships Python 3.6, which the runner does not support; the build",
            "stops with that message. Use JetPack 5+ bases (l4t-jetpack r35/r36) where the board allows.",
        ]
    if b.backend == "tensorrt":
        lines += [
            "",
            "The TensorRT engine is built from the ONNX model at first start (minutes on a Jetson) and",
            "cached in the `metaedge-trt-cache` volume, keyed by model hash and TensorRT version.",
        ]
    lines += [
        "",
        "## Run",
        "",
        "```sh",
        c["run"],
        c["health"],
        c["infer"],
        c["metrics"],
        "```",
        "",
        '`/infer` takes JSON `{"input": [[[[...]]]]}` or raw `.npy` bytes (`Content-Type: application/x-npy`),',
        'one sample [C, H, W] or a batch [N, C, H, W], and answers `{"logits": ..., "top1": ...}`.',
        "Bad input gets HTTP 400 with a message. One-shot inference on files (.npy or images):",
        "",
        "```sh",
        c["run_once"],
        "```",
        "",
        "Environment: `METAEDGE_PORT` (8080), `METAEDGE_THREADS`, `METAEDGE_BACKEND`, `METAEDGE_CACHE_DIR`;",
        "dynamic batching `METAEDGE_MAX_BATCH` (1: off) and `METAEDGE_BATCH_TIMEOUT_MS` (2); limits `METAEDGE_WORKERS`,",
        "`METAEDGE_QUEUE_LIMIT` (128, then 503 + Retry-After), `METAEDGE_MAX_BODY_MB` (64), `METAEDGE_READ_TIMEOUT` (30 s),",
        "`METAEDGE_IDLE_TIMEOUT` (15 s), `METAEDGE_DRAIN_TIMEOUT` (8 s). `/healthz` answers 503 until the model is loaded",
        "and warmed up (the HEALTHCHECK uses it); `docker stop` (SIGTERM) drains in-flight requests and exits 0.",
        "",
        "## Contents",
        "",
        *[f"- `{f}`" for f in b.files],
        "",
    ]
    return "\n".join(lines)


def write_bundle(cfg: BundleConfig) -> Bundle:
    target = resolve_target(cfg.target)
    backend = cfg.backend or target.default_backend
    if backend not in target.backends:
        raise MetaedgeError(
            f"target {target.name} bundles support backends {', '.join(target.backends)}, not {backend!r}", f"pass --backend {target.default_backend}"
        )
    art = Path(cfg.artifact)
    manifest = load_manifest(art)
    spec = manifest.get("model") or {}
    model_path = _pick_model(art, manifest, target, backend)
    model_rel = model_path.relative_to(art).as_posix()

    out = Path(cfg.out)
    if out.exists():
        is_bundle = (out / "bundle.json").is_file()
        if any(out.iterdir()) and not (is_bundle or cfg.force):
            raise MetaedgeError(f"{out} exists and is not a metaedge bundle", "choose an empty --out directory or pass --force")
        if out.resolve() in (art.resolve(), *art.resolve().parents):
            raise MetaedgeError(f"--out {out} would replace the artifact directory", "choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)

    if backend == "tensorrt" and target.family == "cuda" and "tensorrt" not in target.base_image:
        target = replace(target, base_image=CUDA_TENSORRT_BASE)
    base = cfg.base_image or target.base_image
    model_name = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in str(spec.get("name", "model")).lower())
    image = cfg.tag or f"metaedge/{model_name}:{target.name}"
    template = "tensorrt.Dockerfile" if backend == "tensorrt" else "python.Dockerfile"
    text = resources.files("metaedge.deploy.bundle").joinpath("templates", template).read_text()
    for key, value in {
        "MODEL": model_name,
        "TARGET": target.name,
        "PLATFORM": target.platform,
        "BACKEND": backend,
        "BASE_IMAGE": target.base_image,
        "THREADS": str(cfg.threads),
    }.items():
        text = text.replace(f"@@{key}@@", value)

    (out / "Dockerfile").write_text(text)
    (out / ".dockerignore").write_text("README.md\nbundle.json\n**/__pycache__\n")
    (out / "requirements.txt").write_text("".join(f"{r}\n" for r in _apply_pins(_requirements(target, backend), cfg.pins)))
    dest_model = out / "artifact" / model_rel
    dest_model.parent.mkdir(parents=True)
    shutil.copy2(model_path, dest_model)
    if backend == "tvm":
        _copy_tuning(model_path, out / "artifact" / "tvm-tuning")
    atomic_write_json(out / "artifact" / MANIFEST_NAME, _trimmed_manifest(manifest, model_rel, model_path, target, backend))
    _copy_runtime(out / "runtime")
    certs = out / "certs"
    certs.mkdir()
    (certs / "README.txt").write_text("Extra CA certificates (*.crt) trusted while building; add with `metaedge deploy --ca-cert`.\n")
    for i, cert in enumerate(cfg.ca_certs):
        if not Path(cert).is_file():
            raise MetaedgeError(f"CA certificate {cert} does not exist", "pass an existing PEM file to --ca-cert")
        shutil.copyfile(cert, certs / f"{i:02d}-{Path(cert).stem}.crt")

    commands = _commands(target, backend, image, out, cfg.base_image)
    files = tuple(sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) + ["README.md", "bundle.json"])
    bundle = Bundle(out, target, backend, model_rel, image, tuple(sorted(files)), commands)
    atomic_write_text(out / "README.md", _readme(bundle, spec, target.base_image))
    atomic_write_json(
        out / "bundle.json",
        {
            "schema_version": 1,
            "target": asdict(target),
            "backend": backend,
            "model": model_rel,
            "image": image,
            "base_image": base,
            "commands": commands,
            "files": list(bundle.files),
        },
    )
    # Atomic writes create 0600 files; the image runs as a non-root user, which must read them.
    for p in out.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return bundle


def docker_reachable(docker: str = "docker", env: dict[str, str] | None = None) -> str | None:
    """None when a docker engine answers, else the reason it does not."""
    exe = shutil.which(docker) if os.sep not in docker else docker
    if not exe:
        return f"no `{docker}` client on PATH"
    try:
        r = subprocess.run([exe, "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True, timeout=20, env=env)
    except subprocess.TimeoutExpired:
        return "the docker engine did not answer within 20 s"
    if r.returncode != 0:
        return (r.stderr.strip().splitlines() or ["docker version failed"])[-1]
    return None


def _has_buildx(exe: str, env: dict[str, str] | None) -> bool:
    return subprocess.run([exe, "buildx", "version"], capture_output=True, env=env).returncode == 0


def build_bundle(
    bundle: Bundle, docker: str = "docker", base_image: str | None = None, env: dict[str, str] | None = None, timeout: float = 3600, quiet: bool = False
) -> subprocess.CompletedProcess:
    """Run the bundle's ``docker build`` (emulated through QEMU for a foreign platform)."""
    reason = docker_reachable(docker, env)
    if reason:
        raise MetaedgeError(f"cannot build the bundle: {reason}", "start Docker (tools/docker/start_dockerd.sh) or drop --build and run README.md's command")
    exe = shutil.which(docker) if os.sep not in docker else docker
    assert exe is not None  # docker_reachable found it
    env = dict(env if env is not None else os.environ)
    foreign = bundle.target.platform != {"x86_64": "linux/amd64", "aarch64": "linux/arm64"}.get(host_platform.machine())
    args = [exe]
    if foreign and _has_buildx(exe, env):
        args += ["buildx", "build", "--load"]
    else:
        args += ["build"]
        env.setdefault("DOCKER_BUILDKIT", "1")
    args += ["--platform", bundle.target.platform, "-t", bundle.image]
    if base_image:
        args += ["--build-arg", f"BASE_IMAGE={base_image}"]
    if quiet:
        args.append("-q")
    args.append(str(bundle.root))
    r = subprocess.run(args, capture_output=quiet, text=True, env=env, timeout=timeout)
    if r.returncode != 0:
        tail = (r.stderr or "").strip().splitlines()[-5:] if quiet else []
        raise MetaedgeError(
            f"docker build of {bundle.image} failed (exit {r.returncode}) {' | '.join(tail)}",
            "see the build output above; README.md in the bundle has the command",
        )
    return r
