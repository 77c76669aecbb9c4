"""Packages whose public names are imported on first access (PEP 562), so that importing them stays cheap."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(namespace: dict[str, Any], where: Mapping[str, str]) -> tuple[Callable, Callable]:
    """The ``__getattr__`` and ``__dir__`` of the package whose globals are ``namespace``.

    ``where`` maps each public name to the module holding it (absolute, or relative to the package). A name whose
    module is the package's submodule of that name is the submodule itself (``"pp": ".pp"``). A value, once
    imported, is kept in the package's globals; ``dir()`` lists ``__all__``.
    """
    package = namespace["__name__"]

    def __getattr__(name: str):
        if name not in where:
            msg = f"module {package!r} has no attribute {name!r}"
            raise AttributeError(msg)
        module = importlib.import_module(where[name], package)
        value = module if module.__name__ == f"{package}.{name}" else getattr(module, name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(namespace["__all__"])

    return __getattr__, __dir__
