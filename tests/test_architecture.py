"""The import graph of metaedge/ read with ``ast`` (every import, also those inside functions):
layers import one way, no cycles among module-level imports, no private names across packages,
and docs/ARCHITECTURE.md names every package and top-level module (so the map cannot drift).

Any violation accepted for a while goes into KNOWN: the test fails when a new one appears and when
a listed one is fixed (delete it from the list then)."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "metaedge"
DOC = REPO / "docs" / "ARCHITECTURE.md"

# Module-name prefix -> layer group; the longest matching prefix wins.
GROUPS = {
    "metaedge": "api",  # the package root: the public API, imported lazily (PEP 562 __getattr__)
    "metaedge.errors": "core",
    "metaedge.artifacts": "core",
    "metaedge.latency": "core",
    "metaedge.parity": "core",
    "metaedge.onnx_graph": "core",
    "metaedge.qdq": "core",
    "metaedge.data": "core",
    "metaedge.zoo": "core",
    "metaedge.targets": "targets",
    "metaedge.compress": "compress",
    "metaedge.deploy": "deploy",
    "metaedge.deploy.runtime": "runtime",
    "metaedge.report": "report",
    "metaedge.config": "pipeline",
    "metaedge.pipeline": "pipeline",
    "metaedge.manifest": "pipeline",
    "metaedge.sweep": "pipeline",  # many budgets through the pipeline, one PruningNet
    "metaedge.cli": "cli",
}
ALLOWED = {
    "core": {"core"},
    "targets": {"core", "targets"},
    "compress": {"core", "compress"},
    "deploy": {"core", "targets", "deploy", "runtime"},
    "runtime": {"runtime"},  # ships to devices without torch: plus _runtime_extra()
    "report": {"core", "report"},
    "pipeline": {"core", "targets", "compress", "deploy", "runtime", "report", "pipeline"},
    "cli": {"core", "targets", "compress", "deploy", "runtime", "report", "pipeline", "cli"},
    "api": set(GROUPS.values()),
}


def _runtime_extra() -> set[str]:
    """The only modules outside deploy/runtime/ that the bundle copies next to it (torch-free)."""
    from metaedge.deploy.bundle.builder import RUNTIME_MODULES

    return {f"metaedge.{name.removesuffix('.py')}" for name in RUNTIME_MODULES}


# Violations allowed for now, each (importer, imported, rule): none left. This set must only shrink.
KNOWN: set[tuple[str, str, str]] = set()


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    names: tuple[str, ...]  # names taken from dst by ``from dst import ...``
    top_level: bool  # runs at import time (not inside a function)
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _package_of(path: Path) -> str:
    return ".".join(path.relative_to(REPO).parent.parts)


FILES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}
MODULES = set(FILES)


def _edges(name: str, path: Path) -> list[Edge]:
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out: list[Edge] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == "metaedge":
                        out.append(Edge(name, alias.name, (), not in_function, child.lineno))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                if base.split(".")[0] != "metaedge":
                    continue
                attrs = []
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    if sub in MODULES:  # ``from pkg import module``
                        out.append(Edge(name, sub, (), not in_function, child.lineno))
                    else:
                        attrs.append(alias.name)
                if attrs:
                    out.append(Edge(name, base, tuple(attrs), not in_function, child.lineno))
            visit(child, nested)

    visit(tree, False)
    return out


EDGES = [e for name, path in FILES.items() for e in _edges(name, path)]


def group_of(module: str) -> str:
    best = max((p for p in GROUPS if module == p or module.startswith(p + ".")), key=len)
    return GROUPS[best]


def _package_of_module(module: str) -> str:
    path = FILES.get(module)
    return _package_of(path) if path is not None else module.rpartition(".")[0]


def layer_violations() -> set[tuple[str, str, str]]:
    runtime_extra = _runtime_extra()
    bad = set()
    for e in EDGES:
        if e.dst == "metaedge" or e.dst not in MODULES:
            continue  # the root package loads with every submodule; unknown names are caught by imports
        src, dst = group_of(e.src), group_of(e.dst)
        if src == "runtime":
            if dst != "runtime" and e.dst not in runtime_extra:
                bad.add((e.src, e.dst, "runtime imports only runtime/ and the layer-0 modules the bundle copies"))
        elif dst not in ALLOWED[src]:
            bad.add((e.src, e.dst, f"{src} may not import {dst}"))
    return bad


def private_violations() -> set[tuple[str, str, str]]:
    bad = set()
    for e in EDGES:
        src_pkg = _package_of(FILES[e.src])
        if _package_of_module(e.dst) == src_pkg:
            continue
        private_module = any(part.startswith("_") and not part.startswith("__") for part in e.dst.split("."))
        private_names = [n for n in e.names if n.startswith("_") and not n.startswith("__")]
        if private_module or private_names:
            what = ", ".join(private_names) if private_names else e.dst
            bad.add((e.src, e.dst, f"private name from another package: {what}"))
    return bad


def _cycles() -> list[list[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for e in EDGES:
        if e.top_level and e.dst in MODULES and e.dst != "metaedge":
            graph[e.src].add(e.dst)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def test_the_parser_sees_imports_inside_functions():
    lazy = [e for e in EDGES if e.src == "metaedge.pipeline" and e.dst == "metaedge.deploy.latency_table"]
    assert lazy and not lazy[0].top_level  # imported inside _latency_budget, only when a latency budget is asked for
    assert group_of("metaedge.deploy.runtime.server") == "runtime" and group_of("metaedge.deploy.compile") == "deploy"
    assert group_of("metaedge.qdq.profiles") == "core" and group_of("metaedge") == "api"


@pytest.mark.parametrize("rule", ["layers", "private names"])
def test_no_new_violations_and_known_ones_still_exist(rule):
    found = layer_violations() if rule == "layers" else private_violations()
    known = {k for k in KNOWN if (k[2].startswith("private") == (rule == "private names"))}
    new = sorted(found - known)
    fixed = sorted(known - found)
    assert not new, "new import violations (fix them; see docs/ARCHITECTURE.md):\n" + "\n".join(map(str, new))
    assert not fixed, "fixed violations still listed in KNOWN (delete them):\n" + "\n".join(map(str, fixed))


def test_known_violations_are_only_in_files_owned_elsewhere():
    owned_elsewhere = ("metaedge.pipeline", "metaedge.config", "metaedge.cli", "metaedge.compress")
    assert all(src.startswith(owned_elsewhere) for src, _, _ in KNOWN)


def test_no_import_cycles():
    assert _cycles() == []


def test_architecture_doc_names_every_package_and_module():
    doc = DOC.read_text()
    packages = sorted({p.parent.relative_to(REPO).as_posix() + "/" for p in PKG.rglob("__init__.py")})
    top_modules = sorted(p.relative_to(REPO).as_posix() for p in PKG.glob("*.py") if p.name != "__init__.py")
    missing = [p for p in packages + top_modules if f"`{p}`" not in doc]
    assert not missing, f"docs/ARCHITECTURE.md does not list: {missing}"
    for group in set(GROUPS.values()):
        assert f"| {group} " in doc, f"docs/ARCHITECTURE.md has no row for the {group} layer"
