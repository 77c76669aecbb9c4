"""``sgf.pl.confusion_matrix``: predicted against known cell labels."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._data._anndata import resolve_adata
from ._utils import finish

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData
    from matplotlib.axes import Axes
    from mudata import MuData


def _classes(values: pd.Series) -> list[str]:
    """Every class of a label column: its categories (also unused ones) for a categorical, else its sorted values."""
    import pandas as pd

    if isinstance(values.dtype, pd.CategoricalDtype):
        return [str(c) for c in values.cat.categories]
    return sorted(str(v) for v in pd.unique(values.dropna()))


def confusion_matrix(
    data: AnnData | MuData,
    label_key: str,
    predicted_key: str = "geneformer_label",
    *,
    normalize: bool = True,
    title: str | None = None,
    ax: Axes | None = None,
    cmap: str = "Blues",
    show: bool | None = None,
    save: bool | str | None = None,
    mod: str = "rna",
) -> Axes | None:
    """Heatmap of known (rows) against predicted (columns) labels, e.g. after :func:`scgeneformer.tl.annotate`.

    Every class is shown, also classes no cell was predicted as (an empty column) and classes of the predictions
    that no cell is known to be (e.g. a model's class absent from the query data, or ``"unknown"`` from
    :func:`~scgeneformer.tl.annotate`'s ``min_probability``: extra columns). For categorical columns, their
    categories are the classes, in their order; known classes come first on both axes, so that correct predictions
    lie on the diagonal. Row labels give each known class's number of cells; cells with a missing known or
    predicted label are left out.

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
    title
        Title of the plot; default: ``"<predicted_key> vs <label_key>"`` with the accuracy and the number of cells.
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
    known_all, predicted_all = adata.obs[label_key], adata.obs[predicted_key]
    both = known_all.notna().to_numpy() & predicted_all.notna().to_numpy()
    known = known_all[both].astype(str).to_numpy()
    predicted = predicted_all[both].astype(str).to_numpy()
    known_classes = [c for c in _classes(known_all) if c in set(known)] if both.any() else []
    # known classes with cells are the rows; the columns add every predicted class (also never-predicted ones)
    rows = known_classes
    columns = rows + [c for c in _classes(predicted_all) if c not in set(rows)]
    counts = pd.DataFrame(sk_confusion_matrix(known, predicted, labels=columns), index=columns, columns=columns)
    table = counts.loc[rows, columns].astype(float)
    n_cells = table.sum(1)
    if normalize:
        table = table.div(n_cells.replace(0, np.nan), axis=0)
    ax_given = ax is not None
    if ax is None:
        _, ax = plt.subplots(figsize=(0.6 * len(columns) + 3, 0.5 * len(rows) + 2))
    image = ax.imshow(table.to_numpy(), cmap=cmap, vmin=0, vmax=1 if normalize else None, aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=90)
    ax.set_yticks(range(len(rows)), [f"{r} ({int(n)})" for r, n in zip(rows, n_cells, strict=True)])
    ax.grid(False)  # scanpy's figure style draws a grid, which would cross the cells
    ax.set_xlabel(f"{predicted_key} (predicted)")
    ax.set_ylabel(f"{label_key} (known; cells)")
    high = 0.5 if normalize else 0.5 * max(float(table.to_numpy().max(initial=0)), 1)
    for (i, j), value in np.ndenumerate(table.to_numpy()):
        if value > 0:
            text = f"{value:.2f}" if normalize else f"{int(value)}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if value > high else "black")
    if title is None:
        n = int(len(known))
        accuracy = float((known == predicted).mean()) if n else float("nan")
        title = f"{predicted_key} vs {label_key}: accuracy {accuracy:.2f}, {n} cell{'s' if n != 1 else ''}"
    ax.set_title(title)
    ax.figure.colorbar(image, ax=ax, label="share of known label" if normalize else "cells")
    return finish(ax, "confusion_matrix", show=show, save=save, ax_given=ax_given)
