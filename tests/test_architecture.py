"""The package's structure, read from the source: layering, no import cycles, no private model calls.

Layers, lowest first: the base layer (``_utils``, ``_settings``, ``_version``, ``_hub``, ``_data``, ``_compute``,
``vocabulary``, ``datasets``), ``pp``, ``model``, ``tl``, ``pl``; the application (the lazy top-level namespace, the
command line and the demo) sits above them all. A module imports only from its own layer or below (``model`` never from
``tl``; the base layer never from ``pp``/``model``/``tl``/``pl``, the application or the package root), ``pl`` reads
``tl`` through its public names only, nothing outside ``model/`` reaches into the model's private modules or calls a
private model method, and no two modules import each other, directly or through others, at module level or inside
functions (imports under ``if TYPE_CHECKING:`` are for type checkers only and do not count).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "scgeneformer"
LAYERS = {"core": 0, "pp": 1, "model": 2, "tl": 3, "pl": 4, "application": 5}
# Entry points above every layer: the lazy top-level namespace, the command line and the demo.
APPLICATION = {"__init__.py", "__main__.py", "demo.py", "cli.py"}


def layer_of(parts: tuple[str, ...]) -> str:
    """Layer of a module given by its path inside the package (``()`` is the package root)."""
    if not parts or (len(parts) == 1 and f"{parts[0]}.py" in APPLICATION):
        return "application"
    return parts[0] if parts[0] in LAYERS else "core"


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def module_parts(path: Path) -> tuple[str, ...]:
    """``("tl", "_embed")`` for ``tl/_embed.py``; a package's ``__init__.py`` is the package itself."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[:-1] if parts[-1] == "__init__" else parts


def _is_module(parts: tuple[str, ...]) -> bool:
    where = PACKAGE.joinpath(*parts) if parts else PACKAGE
    return where.with_suffix(".py").is_file() or (where / "__init__.py").is_file()


def imported_modules(path: Path, *, runtime_only: bool = False) -> list[tuple[tuple[str, ...], int]]:
    """``(module path inside the package, line)`` of every import of a package module in ``path``.

    ``from X import _name`` counts as importing ``X._name`` (a private submodule or name); ``from X import sub``
    where ``sub`` is a module counts as importing ``X.sub``.
    """
    package = path.relative_to(PACKAGE).parts[:-1]
    tree = ast.parse(path.read_text())
    found = []
    for node in _runtime_nodes(tree) if runtime_only else ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = tuple(node.module.split(".")) if node.module else ()
            if node.level:
                target = package[: len(package) - node.level + 1] + module
            elif module and module[0] == "scgeneformer":
                target = module[1:]
            else:
                continue
            for alias in node.names:
                named = (*target, alias.name)
                if alias.name.startswith("_") or not module or _is_module(named):
                    found.append((named, node.lineno))
                else:
                    found.append((target, node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "scgeneformer":
                    found.append((tuple(alias.name.split(".")[1:]), node.lineno))
    return found


def modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name not in APPLICATION or p.parent != PACKAGE)


def all_modules():
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_the_layers(path):
    own = layer_of(path.relative_to(PACKAGE).parts[:-1])
    for target, line in imported_modules(path):
        other = layer_of(target)
        assert LAYERS[other] <= LAYERS[own], f"{path.name}:{line} ({own}) imports {'.'.join(target)} ({other})"
        if own != "model" and other == "model" and len(target) > 1:
            assert not target[1].startswith("_"), f"{path.name}:{line} imports the private {'.'.join(target)}"
        if own == "pl" and other == "tl":
            assert not any(p.startswith("_") for p in target[1:2]), (
                f"{path.name}:{line} imports the private {'.'.join(target)}; use the public names of `tl`"
            )


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


def import_graph() -> dict[tuple[str, ...], set[tuple[str, ...]]]:
    """Module → modules it imports at run time (module level or inside functions), package ``__init__``\\ s included.

    Importing ``a.b.c`` runs ``a/__init__``, ``a/b/__init__`` and ``a/b/c``: each is an edge. Names that are not
    modules resolve to the module defining them (their package or file).
    """
    graph: dict[tuple[str, ...], set[tuple[str, ...]]] = {}
    for path in all_modules():
        source = module_parts(path)
        edges = graph.setdefault(source, set())
        for target, _ in imported_modules(path, runtime_only=True):
            while target and not _is_module(target):
                target = target[:-1]
            for depth in range(1, len(target) + 1):
                prefix = target[:depth]
                if prefix != source and not (source[: len(prefix)] == prefix and len(prefix) < len(source)):
                    edges.add(prefix)  # a module's own enclosing packages are already being imported
    return graph


def import_cycles(graph: dict[tuple[str, ...], set[tuple[str, ...]]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), as sorted dotted names."""
    index: dict = {}
    low: dict = {}
    stack: list = []
    on_stack: set = set()
    cycles = []

    def visit(node) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(".".join(m) or "scgeneformer" for m in component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_no_import_cycles():
    cycles = import_cycles(import_graph())
    assert not cycles, f"import cycles (function-local imports included): {cycles}"


def test_the_rules_catch_violations(tmp_path, monkeypatch):
    """The checks above are not vacuous: an upward import, a private call, pl reading a private tl module, the base
    layer importing a tool, and an import cycle through a function-local import are all found."""
    fake = tmp_path / "scgeneformer"
    for folder in ("model", "tl", "pl", "_compute"):
        (fake / folder).mkdir(parents=True)
        (fake / folder / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "model" / "_bad.py").write_text("from ..tl import embed\n")
    (fake / "tl" / "_bad.py").write_text("def f(model):\n    return model._fit(1)\n")
    (fake / "tl" / "_store.py").write_text("X = 1\n")
    (fake / "pl" / "_bad.py").write_text("from ..tl._store import X\n")
    (fake / "_compute" / "_bad.py").write_text("def f():\n    from ..tl import _store\n")
    (fake / "_settings.py").write_text("def f():\n    from ._compute._execution import E\n")
    (fake / "_compute" / "_execution.py").write_text("from .._settings import f\nE = 1\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", fake)
    with pytest.raises(AssertionError, match="imports tl"):
        test_imports_point_down_the_layers(fake / "model" / "_bad.py")
    with pytest.raises(pytest.fail.Exception, match="private model._fit"):
        test_no_private_model_calls_outside_the_model(fake / "tl" / "_bad.py")
    with pytest.raises(AssertionError, match="private tl._store"):
        test_imports_point_down_the_layers(fake / "pl" / "_bad.py")
    with pytest.raises(AssertionError, match=r"\(core\) imports tl"):
        test_imports_point_down_the_layers(fake / "_compute" / "_bad.py")
    with pytest.raises(AssertionError, match=r"_compute._execution', '_settings'"):
        test_no_import_cycles()
