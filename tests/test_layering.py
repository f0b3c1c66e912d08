"""The layers' import rules, read from the code's own imports (DESIGN: imports only point down).

* core (``lmae_sdk/*.py`` except the torch modules ``model`` and ``boundaries``) imports none
  of runtime, training, export or cli, and no torch;
* the runtime (``lmae_sdk/runtime``) imports neither training, export nor cli, and torch
  only inside the torch backend's functions (a deployment install has no torch);
* training and export import neither the runtime nor the cli, and export not training;
* the recipe (``lmae_sdk/recipe``, ``lmae fit``) runs all three but imports no cli, and torch
  only inside functions; nothing below the cli imports it;
* no module is longer than 450 lines.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TORCH_MODULES = {"model.py", "boundaries.py", "checkpoint.py", "torch_device_memory.py"}  # the torch layer inside lmae_sdk/
MAX_LINES = 450


def _package_of(path: Path) -> str:
    """The import name of a source file's package: top-level training/ and export/ install as
    lmae_sdk.training and lmae_sdk.export."""
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[0] in ("training", "export"):
        parts = ["lmae_sdk"] + parts
    return ".".join(parts[:-1])


def imports(path: Path, top_level_only: bool = False, package: str | None = None) -> set[str]:
    """Absolute names of the modules a file imports (relative imports resolved against its
    package, or ``package``)."""
    tree = ast.parse(path.read_text(), str(path))
    package = package or _package_of(path)
    nodes = _module_level(tree.body) if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out |= {f"{mod}.{alias.name}" for alias in node.names}
    return out


def _module_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """Statements that run at import: the module body, with the bodies of its ``try`` / ``if``
    / ``with`` blocks (a ``try: import torch`` is an import at load time), not of functions."""
    out = []
    for node in body:
        out.append(node)
        if isinstance(node, (ast.Try, ast.If, ast.With)):
            inner = node.body + node.orelse if not isinstance(node, ast.With) else node.body
            if isinstance(node, ast.Try):
                inner += [s for h in node.handlers for s in h.body] + node.finalbody
            out += _module_level(inner)
    return out


def _files(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def _hits(names: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes))


CORE = [p for p in (REPO / "lmae_sdk").glob("*.py") if p.name not in TORCH_MODULES]


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_core_imports_no_job_and_no_torch(path):
    bad = _hits(imports(path), ("lmae_sdk.runtime", "lmae_sdk.training", "lmae_sdk.export", "lmae_sdk.cli",
                                "lmae_sdk.recipe", "torch", "lmae_sdk.model", "lmae_sdk.boundaries",
                                "lmae_sdk.checkpoint"))
    if path.name == "__init__.py":  # the package's lazy names are strings, not imports
        bad = [b for b in bad if not b.startswith("lmae_sdk.")]
    assert not bad, f"{path.relative_to(REPO)} imports {bad}"


@pytest.mark.parametrize("path", _files("lmae_sdk/runtime"), ids=lambda p: str(p.relative_to(REPO)))
def test_runtime_imports_neither_training_nor_export(path):
    assert not _hits(imports(path), ("lmae_sdk.training", "lmae_sdk.export", "lmae_sdk.cli", "lmae_sdk.recipe"))
    # torch only lazily (inside functions), so that a deployment install without torch imports the runtime
    assert not _hits(imports(path, top_level_only=True), ("torch", "lmae_sdk.model", "lmae_sdk.boundaries",
                                                          "lmae_sdk.checkpoint"))


@pytest.mark.parametrize("path", _files("training") + _files("export"), ids=lambda p: str(p.relative_to(REPO)))
def test_jobs_do_not_import_the_runtime_or_cli(path):
    assert not _hits(imports(path), ("lmae_sdk.runtime", "lmae_sdk.cli", "lmae_sdk.recipe"))
    if path.parent.name == "export":
        assert not _hits(imports(path), ("lmae_sdk.training",))


@pytest.mark.parametrize("path", _files("lmae_sdk/recipe"), ids=lambda p: str(p.relative_to(REPO)))
def test_recipe_imports_no_cli_and_torch_lazily(path):
    assert not _hits(imports(path), ("lmae_sdk.cli",))
    assert not _hits(imports(path, top_level_only=True), ("torch", "lmae_sdk.model", "lmae_sdk.boundaries",
                                                          "lmae_sdk.checkpoint", "lmae_sdk.training",
                                                          "lmae_sdk.export"))


def test_no_module_over_450_lines():
    long = {str(p.relative_to(REPO)): n for folder in ("lmae_sdk", "training", "export", "benchmarks", "tests")
            for p in _files(folder) if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_the_checker_sees_imports(tmp_path):
    """The rules above could fail: a relative import of the runtime from core is caught."""
    probe = REPO / "lmae_sdk" / "config.py"
    names = imports(probe)
    assert "lmae_sdk.propagation" in names  # ``from .propagation import ...`` resolved to its absolute name
    bad = tmp_path / "bad.py"
    bad.write_text("from .runtime.completer import LMAECompleter\n\ndef f():\n    import torch\n")
    guarded = tmp_path / "guarded.py"
    guarded.write_text("try:\n    import torch\nexcept ImportError:\n    torch = None\n")
    assert "torch" in imports(guarded, top_level_only=True, package="lmae_sdk")  # still an import at load
    names = imports(bad, package="lmae_sdk")
    assert _hits(names, ("lmae_sdk.runtime", "torch")) == ["lmae_sdk.runtime.completer",
                                                          "lmae_sdk.runtime.completer.LMAECompleter", "torch"]
    assert "torch" not in imports(bad, top_level_only=True, package="lmae_sdk")  # only inside a function
