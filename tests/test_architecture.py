"""The package's layering, read from the source: which modules may import which, and no private model calls.

Layers, lowest first: the core modules (settings, encoding contract, execution, engine, vocabulary, downloads),
``pp``, ``model``, ``tl``, ``pl``. A module imports only from its own layer or below (``model`` never from ``tl``),
and outside ``model/`` nothing reaches into the model's private modules or calls a private model method.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "scgeneformer"
LAYERS = {"core": 0, "pp": 1, "model": 2, "tl": 3, "pl": 4}
# Entry points above every layer: the lazy top-level namespace and the command line.
APPLICATION = {"__init__.py", "__main__.py", "demo.py", "cli.py"}


def layer_of(parts: tuple[str, ...]) -> str:
    return parts[0] if parts and parts[0] in LAYERS else "core"


def imported_modules(path: Path) -> list[tuple[tuple[str, ...], int]]:
    """``(module path inside the package, line)`` of every import of a package module in ``path``.

    ``from X import _name`` counts as importing ``X._name`` (a private submodule or name).
    """
    package = path.relative_to(PACKAGE).parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = tuple(node.module.split(".")) if node.module else ()
            if node.level:
                target = package[: len(package) - node.level + 1] + module
            elif module and module[0] == "scgeneformer":
                target = module[1:]
            else:
                continue
            for alias in node.names:
                private_or_module = alias.name.startswith("_") or not module
                found.append(((*target, alias.name) if private_or_module else target, node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "scgeneformer":
                    found.append((tuple(alias.name.split(".")[1:]), node.lineno))
    return found


def modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name not in APPLICATION or p.parent != PACKAGE)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_the_layers(path):
    own = layer_of(path.relative_to(PACKAGE).parts[:-1])
    for target, line in imported_modules(path):
        other = layer_of(target)
        assert LAYERS[other] <= LAYERS[own], f"{path.name}:{line} ({own}) imports {'.'.join(target)} ({other})"
        if own != "model" and other == "model" and len(target) > 1:
            assert not target[1].startswith("_"), f"{path.name}:{line} imports the private {'.'.join(target)}"


@pytest.mark.parametrize("path", [p for p in modules() if "model" not in p.relative_to(PACKAGE).parts[:-1]])
def test_no_private_model_calls_outside_the_model(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and isinstance(node.value, ast.Name)
            and "model" in node.value.id.lower()
        ):
            pytest.fail(f"{path.name}:{node.lineno} uses the private {node.value.id}.{node.attr}")


def test_the_rules_catch_violations(tmp_path, monkeypatch):
    """The checks above are not vacuous: an upward import and a private call are found."""
    fake = tmp_path / "scgeneformer"
    (fake / "model").mkdir(parents=True)
    (fake / "model" / "_bad.py").write_text("from ..tl import embed\n")
    (fake / "tl").mkdir()
    (fake / "tl" / "_bad.py").write_text("def f(model):\n    return model._fit(1)\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", fake)
    with pytest.raises(AssertionError, match="imports tl"):
        test_imports_point_down_the_layers(fake / "model" / "_bad.py")
    with pytest.raises(pytest.fail.Exception, match="private model._fit"):
        test_no_private_model_calls_outside_the_model(fake / "tl" / "_bad.py")
