"""Showing and saving figures the way ``scanpy.pl`` does (``show``, ``save``, ``ax``; scanpy's figure settings)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .._settings import logger
from .._utils._files import atomic_path

if TYPE_CHECKING:
    from matplotlib.axes import Axes

_FORMATS = (".pdf", ".png", ".svg", ".jpg", ".jpeg", ".tif", ".tiff", ".eps")


def figure_path(name: str, save: bool | str) -> Path:
    """Where ``save`` puts the figure of plot ``name``: in ``sc.settings.figdir``, named like scanpy's figures.

    ``save=True`` gives ``<figdir>/<name><plot_suffix>.<file_format_figs>``; a string is appended to ``name``, and
    its extension (``.pdf``, ``.png``, ``.svg`` …), if any, sets the format.
    """
    import scanpy as sc

    suffix = "" if save is True else str(save)
    if not suffix.lower().endswith(_FORMATS):
        suffix = f"{suffix}{sc.settings.plot_suffix}.{sc.settings.file_format_figs}"
    return Path(sc.settings.figdir) / f"{name}{suffix}"


def finish(ax: Axes, name: str, *, show: bool | None, save: bool | str | None, ax_given: bool) -> Axes | None:
    """Save the figure if asked, then show it and return ``None``, or return the axes.

    ``show=None`` follows ``sc.settings.autoshow``, except for plots drawn into a given ``ax``.
    """
    import matplotlib.pyplot as plt
    import scanpy as sc

    if save:
        path = figure_path(name, save)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temporary:
            ax.figure.savefig(temporary, format=path.suffix.lstrip("."), bbox_inches="tight")
        logger.info("saved figure to %s", path)
    if show is None:
        show = sc.settings.autoshow and not ax_given
    if show:
        plt.show()
        return None
    return ax
