"""The layout's import rules: wings import one way (face -> training -> reports, data, models -> erase -> common),
no module imports the entry point, and no two modules import each other, directly or round a longer cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO

# Higher imports lower, never the reverse; a wing may import itself. reports, data and models are peers that do not
# import one another. The commands users type (train, results, select, presets, python -m erasenet.models, the analysis
# figures, python -m erasenet.pi) are the face.
WINGS = {
    "face": 4, "training": 3, "reports": 2, "data": 2, "models": 2, "erase": 1, "common": 0,
}
FACE = ("erasenet.train", "erasenet.results", "erasenet.select", "erasenet.presets", "erasenet.criticality",
        "erasenet.cli", "erasenet.models.__main__", "erasenet.analysis", "erasenet.pi")


def wing_of(module: str) -> str:
    if any(module == face or module.startswith(face + ".") for face in FACE):
        return "face"
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "conf":
        return "common"  # the package itself (its version) and the packaged config tree
    return parts[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted((REPO / "erasenet").rglob("*.py"))}


def imported_modules(source: str, package: str, top_level_only: bool = False) -> set[str]:
    """The erasenet modules ``source`` (a module of ``package``) imports, relative imports resolved; ``from p import
    m`` names the submodule ``p.m`` where there is one. Imports under ``if TYPE_CHECKING`` do not run."""
    tree = ast.parse(source)
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in
                   ast.unparse(node.test) for n in ast.walk(node)}
    statements = tree.body if top_level_only else ast.walk(tree)
    names = set()
    for node in statements:
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            submodules = {f"{module}.{a.name}" for a in node.names} & MODULES.keys()
            names |= submodules if len(submodules) == len(node.names) else {module} | submodules
    return names


def import_graph(top_level_only: bool = False) -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = imported_modules(path.read_text(), package, top_level_only)
        graph[name] = {m for m in found if m in MODULES and m != name}
    return graph


def test_wings_import_one_way():
    upward = [f"{name} ({wing_of(name)}) imports {target} ({wing_of(target)})"
              for name, targets in import_graph().items() for target in sorted(targets)
              if wing_of(target) != wing_of(name) and WINGS[wing_of(target)] >= WINGS[wing_of(name)]]
    assert upward == []


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components of more than one module: each is an import cycle."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycle_between_modules():
    assert strongly_connected(import_graph()) == []


def test_the_cycle_check_finds_a_cycle():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_the_entry_point():
    assert [name for name, targets in import_graph().items() if "erasenet.train" in targets] == []


def test_every_wing_says_what_lives_there():
    for wing in ("erase", "training", "reports", "cli", "common", "models", "data", "analysis"):
        doc = ast.get_docstring(ast.parse((REPO / "erasenet" / wing / "__init__.py").read_text()))
        assert doc and "\n" not in doc.strip(), wing


def test_wings_are_told_apart():
    assert [wing_of(m) for m in ("erasenet.train", "erasenet.training.run", "erasenet.cli.slurm", "erasenet.models.zoo",
                                 "erasenet.models.__main__", "erasenet", "erasenet.common.config")] == [
        "face", "training", "face", "models", "face", "common", "common"]


# What each layer may not load, checked in one fresh Python: the torch-free records first, then the bottom layer.
LOADS_NOTHING_OF = {
    ("erasenet.common.records", "erasenet.reports.stats"): ("torch", "hydra", "omegaconf"),
    # erasenet.models and erasenet.erase stand on torch alone (and torchvision/timm, lazily)
    ("erasenet.models", "erasenet.erase", "erasenet.erase.rectifiers", "erasenet.erase.graph_sites"): (
        "hydra", "omegaconf", "erasenet.common.config", "erasenet.train", "erasenet.training.run",
        "erasenet.training.engine", "erasenet.training.state"),
}


def test_each_layer_loads_nothing_it_must_not():
    probe = "import importlib, sys\n" + "".join(
        f"for m in {modules!r}:\n    importlib.import_module(m)\n"
        f"print(sorted(m for m in sys.modules if m in {banned!r} or m.split('.')[0] in {banned!r}))\n"
        for modules, banned in LOADS_NOTHING_OF.items())
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert out.stdout.split("\n")[:len(LOADS_NOTHING_OF)] == ["[]"] * len(LOADS_NOTHING_OF), out.stdout


def test_the_import_scan_resolves_relative_imports():
    assert "erasenet.train" in imported_modules("from .train import main", "erasenet")
    assert "erasenet.train" in imported_modules("def f():\n    from .. import train", "erasenet.models")
    assert "erasenet.train" in imported_modules("import erasenet.train", "erasenet.data")
    assert "erasenet.erase.sites" in imported_modules("from ..erase import sites", "erasenet.models")
    assert "erasenet.erase" not in imported_modules("from . import sites", "erasenet.erase")
    assert "erasenet.train" not in imported_modules("from .training import x", "erasenet")
    assert imported_modules("if TYPE_CHECKING:\n    from .build import Run", "erasenet.training") == set()
