"""``sgf.pl.benchmark_embeddings`` and ``sgf.pl.training_history``: embedding scores and training curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._data._anndata import resolve_adata
from .._utils._text import counted
from ._utils import finish

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData
    from matplotlib.axes import Axes
    from mudata import MuData

_AGGREGATE = "Aggregate score"
_TYPE_ORDER = ("Bio conservation", "Batch correction", _AGGREGATE)


def benchmark_embeddings(
    data: AnnData | MuData,
    key: str = "geneformer_benchmark",
    *,
    sort_by: str | None = None,
    title: str | None = None,
    cmap: str = "viridis",
    ax: Axes | None = None,
    show: bool | None = None,
    save: bool | str | None = None,
    mod: str = "rna",
) -> Axes | None:
    """Scores of :func:`scgeneformer.tl.benchmark_embeddings` as a table of coloured cells: embeddings × metrics.

    One row per embedding (best first), one column per metric, grouped into bio conservation, batch correction and
    the aggregate scores (right, after a line); each cell shows its value, coloured on a common 0–1 scale.

    Parameters
    ----------
    data
        AnnData (or MuData) holding the results in ``.uns[key]``.
    key
        The ``key_added`` of :func:`~scgeneformer.tl.benchmark_embeddings`.
    sort_by
        Metric ordering the rows (highest first); default: ``"Total"``, else ``"Bio conservation"``.
    title
        Title; default: the label (and batch) key and the number of cells.
    cmap
        Matplotlib colour map.
    ax, show, save, mod
        As in :func:`scgeneformer.pl.confusion_matrix`.

    Returns
    -------
    ``None`` when the figure is shown, else the axes.

    Examples
    --------
    >>> sgf.tl.benchmark_embeddings(adata, "cell_type")  # doctest: +SKIP
    >>> sgf.pl.benchmark_embeddings(adata, save="_pbmc.pdf")  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    adata = resolve_adata(data, mod)
    if key not in adata.uns or "metrics" not in adata.uns[key]:
        msg = f".uns[{key!r}] holds no results of sgf.tl.benchmark_embeddings; run it first."
        raise KeyError(msg)
    table: pd.DataFrame = adata.uns[key]["metrics"]
    params = adata.uns[key].get("params", {})
    wide = table.pivot(index="embedding", columns="metric", values="value").astype(float)
    kinds = table.drop_duplicates("metric").set_index("metric")["metric_type"]
    order = {kind: i for i, kind in enumerate(_TYPE_ORDER)}
    metrics = sorted(kinds.index, key=lambda m: (order.get(kinds[m], 1.5), list(kinds.index).index(m)))
    if sort_by is None:
        sort_by = "Total" if "Total" in wide.columns else "Bio conservation"
    if sort_by not in wide.columns:
        msg = f"sort_by {sort_by!r} is not a metric; choose from {metrics}."
        raise ValueError(msg)
    wide = wide.sort_values(sort_by, ascending=False)[metrics]
    values = wide.to_numpy()

    ax_given = ax is not None
    if ax is None:
        _, ax = plt.subplots(figsize=(0.75 * len(metrics) + 2.5, 0.45 * len(wide) + 1.8))
    image = ax.imshow(values, cmap=cmap, vmin=0, vmax=1, aspect="auto")
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            red, green, blue, _ = image.cmap(image.norm(value))
            colour = "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"
            weight = "bold" if kinds[metrics[j]] == _AGGREGATE else "normal"
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize="small", color=colour, weight=weight)
    ax.set_xticks(range(len(metrics)), metrics, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(wide)), list(wide.index))
    # vertical lines between metric groups, and the group names above them
    groups = [kinds[m] for m in metrics]
    starts = [j for j in range(len(groups)) if j == 0 or groups[j] != groups[j - 1]]
    for start, end in zip(starts, [*starts[1:], len(groups)], strict=True):
        if start:
            ax.axvline(start - 0.5, color="white", linewidth=3)
        ax.text(
            (start + end - 1) / 2,
            1.02,
            groups[start],
            ha="center",
            va="bottom",
            fontsize="small",
            transform=ax.get_xaxis_transform(),
        )
    ax.tick_params(length=0)
    ax.grid(False)  # scanpy's figure style draws a grid, which would cross the cells
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title is None:
        title = f"{params.get('label_key', '')}"
        if params.get("batch_key"):
            title += f" / batch: {params['batch_key']}"
        if "n_cells" in params:
            title += f", {counted(int(params['n_cells']), 'cell')}"
    ax.set_title(title, pad=20)
    ax.figure.colorbar(image, ax=ax, label="score (higher is better)", fraction=0.04, pad=0.02)
    return finish(ax, "benchmark_embeddings", show=show, save=save, ax_given=ax_given)


def _history_of(model: Any) -> dict[str, pd.Series]:
    """Each recorded quantity of a training history as a Series indexed by epoch."""
    import pandas as pd

    history = model if isinstance(model, Mapping) else getattr(model, "history", None)
    if history is None:
        msg = "Give a trained model (with `.history`) or its history (a dict of DataFrames)."
        raise TypeError(msg)
    out = {}
    for name, frame in history.items():
        series = frame.iloc[:, 0] if isinstance(frame, pd.DataFrame) else pd.Series(frame)
        out[str(name)] = pd.to_numeric(series, errors="coerce")
    return out


def training_history(
    model: Any,
    keys: str | Sequence[str] | None = None,
    *,
    title: str | None = "Training history",
    ax: Axes | None = None,
    show: bool | None = None,
    save: bool | str | None = None,
) -> Axes | None:
    """Loss and metric curves per epoch from a model's training history (``model.history``).

    Losses (quantities whose name holds ``"loss"``) are drawn against the left axis; other quantities (accuracy,
    macro-F1…) against a second axis on the right, dashed. Validation curves have markers.

    Parameters
    ----------
    model
        A model trained by :meth:`~scgeneformer.GeneformerModel.train`,
        :meth:`~scgeneformer.GeneformerModel.train_classifier` or the like, or its ``history`` (scvi-tools' dict of
        one-column DataFrames indexed by epoch, e.g. ``train_loss``, ``validation_loss``, ``validation_macro_f1``).
    keys
        Quantities to draw; default: every per-epoch one (names ending in ``_step`` are per-step and left out).
    title
        Title of the plot (``None``: none).
    ax, show, save
        As in :func:`scgeneformer.pl.confusion_matrix`.

    Returns
    -------
    ``None`` when the figure is shown, else the axes (of the losses, or of the metrics when no loss is drawn).

    Examples
    --------
    >>> model.train_classifier(max_epochs=10)  # doctest: +SKIP
    >>> sgf.pl.training_history(model, save="_classifier.pdf")  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    history = _history_of(model)
    if keys is None:
        keys = [k for k in history if not k.endswith("_step") and history[k].notna().any()]
    else:
        keys = [keys] if isinstance(keys, str) else list(keys)
        missing = [k for k in keys if k not in history]
        if missing:
            msg = f"{missing} not in the training history; recorded: {list(history)}."
            raise KeyError(msg)
    if not keys:
        msg = "The training history is empty: train the model first."
        raise ValueError(msg)
    losses = [k for k in keys if "loss" in k]
    others = [k for k in keys if "loss" not in k]

    ax_given = ax is not None
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.5))
    panels = []
    if losses:
        panels.append((ax, losses, "loss", "-"))
    if others:
        panels.append((ax.twinx() if losses else ax, others, "metric", "--"))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    handles = []
    for n, (axis, names, label, style) in enumerate(panels):
        for i, name in enumerate(names):
            series = history[name].dropna()
            marker = "o" if "val" in name else None
            colour = colours[(i + n * len(losses)) % len(colours)]
            (line,) = axis.plot(
                series.index.to_numpy(), series.to_numpy(), style, marker=marker, markersize=3, color=colour, label=name
            )
            handles.append(line)
        axis.set_ylabel(label)
        axis.ticklabel_format(axis="y", useOffset=False)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(panels) == 2:
        panels[1][0].grid(False)  # one grid, the losses'
    # below the axes, where it hides no curve
    ax.legend(
        handles=handles,
        labels=[h.get_label() for h in handles],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.18),
        ncol=2,
        fontsize="small",
        frameon=False,
    )
    if title:
        ax.set_title(title)
    return finish(ax, "training_history", show=show, save=save, ax_given=ax_given)
