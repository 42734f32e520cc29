"""The import rules of the layout: models and the erase policy are the bottom layer, and nothing imports the
entry point."""

import ast
import subprocess
import sys

from conftest import REPO


def test_models_and_erase_load_neither_hydra_nor_omegaconf():
    probe = "import sys, erasenet.models, erasenet.erase; print(sorted(m for m in ('hydra', 'omegaconf') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert out.stdout.strip() == "[]"


def imported_modules(source: str, package: str) -> set[str]:
    """The absolute names of the modules ``source`` (a module of ``package``) imports, relative imports resolved."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            names |= {module} | {f"{module}.{a.name}" for a in node.names}
    return names


def test_no_module_imports_the_entry_point():
    importers = []
    for path in sorted((REPO / "erasenet").rglob("*.py")):
        package = ".".join(path.relative_to(REPO).parts[:-1])
        if path.name != "train.py" and "erasenet.train" in imported_modules(path.read_text(), package):
            importers.append(str(path.relative_to(REPO)))
    assert importers == []


def test_the_import_scan_resolves_relative_imports():
    assert "erasenet.train" in imported_modules("from .train import main", "erasenet")
    assert "erasenet.train" in imported_modules("def f():\n    from .. import train", "erasenet.models")
    assert "erasenet.train" in imported_modules("import erasenet.train", "erasenet.data")
    assert "erasenet.train" not in imported_modules("from .training import x", "erasenet")
