"""Optional dependencies (extras), imported only when a feature needs them."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(package: str, extra: str) -> ModuleType:
    """Import an optional dependency, or raise an ImportError naming the extra that installs it.

    Examples
    --------
    >>> optuna = require("optuna", "search")  # doctest: +SKIP
    """
    try:
        return importlib.import_module(package)
    except ImportError as e:
        msg = f"This needs the optional dependency {package!r}: pip install 'scgeneformer[{extra}]'."
        raise ImportError(msg) from e
