"""``metaedge deploy``: write a Docker build context that serves an artifact on a target device."""

from __future__ import annotations

import argparse
from pathlib import Path

from metaedge.cli._common import console, positive_int
from metaedge.deploy.bundle.targets import BUNDLE_TARGETS

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "deploy",
        help="write a Docker bundle (runtime image + model) for a target device",
        description="Write a Docker build context for --target: Dockerfile, the model and manifest, the torch-free "
        "runner and a README with the exact docker build/run commands. --build also builds the image.",
    )
    p.add_argument("--target", required=True, help=f"target name ({', '.join(BUNDLE_TARGETS)}, or a user target)")
    p.add_argument("--artifact", type=Path, default=Path("metaedge-out"), help="artifact directory (default: metaedge-out)")
    p.add_argument("--out", type=Path, default=None, help="bundle directory (default: <artifact>-bundle-<target>)")
    p.add_argument(
        "--backend", choices=("onnxruntime", "tvm", "tensorrt"), default=None, help="runtime in the image (default: onnxruntime on CPUs, tensorrt on Jetson)"
    )
    p.add_argument("--base-image", default=None, help="base image to build from (passed as --build-arg BASE_IMAGE)")
    p.add_argument("--tag", default=None, help="image tag (default: metaedge/<model>:<target>)")
    p.add_argument("--threads", type=positive_int, default=1, help="inference threads in the container (default 1)")
    p.add_argument(
        "--ca-cert", type=Path, action="append", default=[], help="extra CA certificate (PEM) trusted during the image build, e.g. a proxy's; repeatable"
    )
    p.add_argument("--pin", action="append", default=[], metavar="PKG==VER", help="override a runtime requirement, e.g. --pin onnxruntime==1.20.1; repeatable")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out that is not a bundle")
    p.add_argument("--build", action="store_true", help="run docker build now (needs a reachable docker engine)")
    p.add_argument("--docker", default="docker", help="docker client to use with --build (default: docker on PATH)")
    return p


def run(args: argparse.Namespace) -> int:
    from metaedge.deploy.bundle import BundleConfig, build_bundle, write_bundle

    out = args.out or args.artifact.with_name(f"{args.artifact.name}-bundle-{args.target}")
    bundle = write_bundle(
        BundleConfig(
            target=args.target,
            artifact=args.artifact,
            out=out,
            backend=args.backend,
            base_image=args.base_image,
            tag=args.tag,
            threads=args.threads,
            force=args.force,
            ca_certs=tuple(args.ca_cert),
            pins=tuple(args.pin),
        )
    )
    con = console()
    con.print(f"[bold]bundle[/bold] {bundle.root}  target={bundle.target.name} ({bundle.target.platform}) backend={bundle.backend} image={bundle.image}")
    con.print(f"  build: {bundle.commands['build']}")
    con.print(f"  run:   {bundle.commands['run']}")
    if args.build:
        build_bundle(bundle, docker=args.docker, base_image=args.base_image)
        con.print(f"[green]built[/green] {bundle.image}")
    return 0
