"""``metaedge`` entry point: one sub-command per module, user errors as one line with exit code 2."""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType
from typing import NoReturn, Sequence

from metaedge import __version__
from metaedge.errors import EXIT_USAGE, MetaedgeError

__all__ = ["main", "build_parser"]

COMMANDS = ("compress", "sweep", "info", "export", "profile", "targets", "tune", "compile", "deploy")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse's own usage errors: one line, exit 2
        self.exit(EXIT_USAGE, f"metaedge: error: {message}; run `{self.prog} --help`\n")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, ModuleType]]:
    parser = _Parser(prog="metaedge", description="Compress a PyTorch CNN and ship it to embedded targets.")
    parser.add_argument("--version", action="version", version=f"metaedge {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    modules: dict[str, ModuleType] = {}
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"metaedge.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"metaedge.cli.{name}":
                continue  # command not built in this installation
            raise
        p = mod.add_parser(sub)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
        modules[name] = mod
    return parser, modules


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser, modules = build_parser()
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help()
            return 0
        return int(modules[args.command].run(args) or 0)
    except MetaedgeError as exc:
        if debug:
            raise
        print(f"metaedge: error: {exc.one_line()}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("metaedge: interrupted; run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
