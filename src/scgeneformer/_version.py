"""The installed version, read from the package metadata (importing nothing of the package)."""

from __future__ import annotations

try:
    from importlib.metadata import version as _version

    __version__ = _version("scgeneformer")
except Exception:  # noqa: BLE001 - not installed (e.g. run from a source tree)
    __version__ = "unknown"
