"""``sgf.pl.confusion_matrix``: predicted against known cell labels."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._data._anndata import resolve_adata
from ._utils import finish

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from mudata import MuData


def confusion_matrix(
    data: AnnData | MuData,
    label_key: str,
    predicted_key: str = "geneformer_label",
    *,
    normalize: bool = True,
    ax: Axes | None = None,
    cmap: str = "Blues",
    show: bool | None = None,
    save: bool | str | None = None,
    mod: str = "rna",
) -> Axes | None:
    """Heatmap of known (rows) against predicted (columns) labels, e.g. after :func:`scgeneformer.tl.annotate`.

    Parameters
    ----------
    data
        AnnData (or MuData) holding both label columns.
    label_key
        ``.obs`` column with the known labels.
    predicted_key
        ``.obs`` column with the predictions.
    normalize
        Show the share of each known label's cells (rows sum to 1) instead of counts.
    ax
        Axes to draw into; a new figure by default.
    cmap
        Matplotlib colour map.
    show
        Show the figure; default: ``sc.settings.autoshow``, unless ``ax`` was given. When not shown, the axes are
        returned.
    save
        Save the figure, as ``sc.pl`` does: ``True`` writes ``<sc.settings.figdir>/<plot name>.<file_format_figs>``;
        a string is appended to the plot name (its extension, e.g. ``".pdf"``, sets the format).
    mod
        Modality used when ``data`` is a MuData.

    Returns
    -------
    ``None`` when the figure is shown, else the axes.

    Examples
    --------
    >>> sgf.tl.annotate(query, model)  # doctest: +SKIP
    >>> sgf.pl.confusion_matrix(query, "cell_type", save="_query.pdf")  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt
    import pandas as pd
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix

    adata = resolve_adata(data, mod)
    for key in (label_key, predicted_key):
        if key not in adata.obs.columns:
            msg = f"{key!r} is not an .obs column."
            raise KeyError(msg)
    known = adata.obs[label_key].astype(object)
    predicted = adata.obs[predicted_key].astype(object)
    both = known.notna() & predicted.notna()
    known, predicted = known[both].astype(str), predicted[both].astype(str)
    rows = sorted(pd.unique(known))
    columns = sorted(pd.unique(predicted))
    labels = sorted(set(rows) | set(columns))
    matrix = sk_confusion_matrix(known, predicted, labels=labels)
    table = pd.DataFrame(matrix, index=labels, columns=labels).loc[rows, columns].astype(float)
    if normalize:
        table = table.div(table.sum(1).replace(0, np.nan), axis=0)
    ax_given = ax is not None
    if ax is None:
        _, ax = plt.subplots(figsize=(0.6 * len(columns) + 3, 0.5 * len(rows) + 2))
    image = ax.imshow(table.to_numpy(), cmap=cmap, vmin=0, vmax=1 if normalize else None, aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=90)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel(predicted_key)
    ax.set_ylabel(label_key)
    for (i, j), value in np.ndenumerate(table.to_numpy()):
        if value > 0:
            text = f"{value:.2f}" if normalize else f"{int(value)}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if value > 0.5 else "black")
    ax.figure.colorbar(image, ax=ax, label="share of known label" if normalize else "cells")
    return finish(ax, "confusion_matrix", show=show, save=save, ax_given=ax_given)
