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


def import_pooch():
    """pooch, imported without tqdm's notebook warning.

    pooch imports ``tqdm.auto`` when it is imported, which warns in notebooks without ipywidgets ("IProgress not
    found"). We never use pooch's own progress bars (we pass ours), so that warning concerns nothing we show.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        import pooch
    return pooch
