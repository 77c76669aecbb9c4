"""Plots of in silico perturbation results (:func:`scgeneformer.tl.perturb`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..tl import PerturbationResults
from ._utils import finish

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData
    from matplotlib.axes import Axes
    from mudata import MuData


def _effect(results: PerturbationResults) -> tuple[pd.DataFrame, str]:
    """Cell rows with an ``effect`` column: the shift toward the goal state, or 1 - cosine without states."""
    rows = results.cell_rows().copy()
    states = results.states
    if states is not None:
        goal = states.goal_state
        rows["effect"] = rows[states.column(goal)].astype(np.float64)
        return rows, f"shift toward {goal}"
    rows["effect"] = 1.0 - rows["cosine"].astype(np.float64)
    return rows, "1 - cosine similarity (perturbed vs original)"


def perturbation_shifts(
    data: AnnData | MuData | dict,
    *,
    key: str = "geneformer_perturb",
    n_genes: int = 20,
    alpha: float = 0.05,
    min_cells: int = 1,
    ax: Axes | None = None,
    show: bool | None = None,
    save: bool | str | None = None,
    mod: str = "rna",
) -> Axes | None:
    """Mean effect of the strongest perturbations, with significance where statistics were computed.

    The effect is the mean shift toward the goal state (goal-state runs) or the mean ``1 - cosine`` between
    perturbed and original cell embeddings. Error bars are the standard error over cells. Genes significant in
    ``.uns[key]["stats_goal_state_shift"]`` (or ``"stats_vs_null"``) at FDR < ``alpha`` are marked with ``*``.

    Parameters
    ----------
    data
        AnnData/MuData with the results in ``.uns[key]``, or the dict returned by :func:`~scgeneformer.tl.perturb`.
    key
        The ``key_added`` of :func:`~scgeneformer.tl.perturb`.
    n_genes
        Number of perturbations shown, largest effects first.
    alpha
        FDR threshold of the significance marks.
    min_cells
        Perturbations seen in fewer cells are left out of the ranking (their mean rests on too few cells).
        Tick labels show each perturbation's number of cells (``n=``). On a two-stage screen, genes whose mean
        includes stage-1 estimates (not confirmed exactly in all their cells) are marked ``≈``.
    ax, show, save, mod
        As in :func:`~scgeneformer.pl.confusion_matrix`.

    Returns
    -------
    ``None`` when the figure is shown, else the axes.

    Examples
    --------
    >>> sgf.tl.perturbation_stats(adata, "goal_state_shift")  # doctest: +SKIP
    >>> sgf.pl.perturbation_shifts(adata, n_genes=15, save=True)  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    results = PerturbationResults(data, key, mod)
    rows, label = _effect(results)
    summary = rows.groupby("perturbed", observed=True)["effect"].agg(["mean", "sem", "size"])
    two_stage = "confirmed" in rows
    if two_stage:  # genes whose mean includes stage-1 estimates are marked ≈
        summary["confirmed"] = rows.groupby("perturbed", observed=True)["confirmed"].sum()
    summary = summary[summary["size"] >= min_cells]  # genes seen in few cells do not top the ranking
    summary = summary.sort_values("mean", ascending=False).head(n_genes)
    fdr = _fdr_by_gene(results)
    ax_given = ax is not None
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 0.3 * len(summary) + 1.5))
    positions = np.arange(len(summary))[::-1]
    ax.barh(positions, summary["mean"], xerr=summary["sem"].fillna(0), color="#4c72b0", alpha=0.85)
    names = []
    for gene in summary.index:
        significant = gene in fdr and fdr[gene] < alpha
        estimated = two_stage and summary.loc[gene, "confirmed"] < summary.loc[gene, "size"]
        mark = (" *" if significant else "") + (" ≈" if estimated else "")
        names.append(f"{gene}{mark} (n={int(summary.loc[gene, 'size'])})")
    ax.set_yticks(positions, names)
    ax.set_xlabel(f"{label}\nmean ± standard error over cells (n = cells)")
    ax.ticklabel_format(axis="x", useOffset=False)
    ax.axvline(0, color="black", linewidth=0.8)
    notes = [f"* FDR < {alpha}"] if fdr else []
    if two_stage:
        notes.append("≈ includes stage-1 estimates")
    ax.set_title(f"top {len(summary)} perturbations" + (f" ({'; '.join(notes)})" if notes else ""))
    return finish(ax, "perturbation_shifts", show=show, save=save, ax_given=ax_given)


def _fdr_by_gene(results: PerturbationResults) -> dict[str, float]:
    for mode, column in (("goal_state_shift", "fdr_goal"), ("vs_null", "fdr")):
        stats = results.stats(mode)
        if stats is not None and column in stats:
            return dict(zip(stats["perturbed"].astype(str), stats[column], strict=True))
    return {}


def perturbation_distribution(
    data: AnnData | MuData | dict,
    genes: Sequence[str] | None = None,
    *,
    key: str = "geneformer_perturb",
    n_genes: int = 10,
    ax: Axes | None = None,
    show: bool | None = None,
    save: bool | str | None = None,
    mod: str = "rna",
) -> Axes | None:
    """Distribution over cells of each perturbation's effect (box plots with the cells as points).

    Parameters
    ----------
    data
        AnnData/MuData with the results in ``.uns[key]``, or the dict returned by :func:`~scgeneformer.tl.perturb`.
    genes
        Perturbations to show (``perturbed`` names); default the ``n_genes`` with the largest mean effect.
    key, n_genes, ax, show, save, mod
        As in :func:`perturbation_shifts`.

    Returns
    -------
    ``None`` when the figure is shown, else the axes.

    Examples
    --------
    >>> sgf.pl.perturbation_distribution(adata, ["STAT1", "IRF7"])  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    results = PerturbationResults(data, key, mod)
    rows, label = _effect(results)
    if genes is None:
        means = rows.groupby("perturbed", observed=True)["effect"].mean()
        genes = list(means.sort_values(ascending=False).index[:n_genes])
    missing = [g for g in genes if g not in set(rows["perturbed"].astype(str))]
    if missing:
        msg = f"No perturbation results for {missing}."
        raise KeyError(msg)
    values = [rows.loc[rows["perturbed"].astype(str) == g, "effect"].to_numpy() for g in genes]
    ax_given = ax is not None
    if ax is None:
        _, ax = plt.subplots(figsize=(0.55 * len(genes) + 2, 4))
    ax.boxplot(values, showfliers=False)
    jitter = np.random.default_rng(0)
    for i, v in enumerate(values, start=1):
        ax.scatter(i + jitter.uniform(-0.15, 0.15, len(v)), v, s=6, color="black", alpha=0.5)
    ax.set_xticks(
        range(1, len(genes) + 1), [f"{g} (n={len(v)})" for g, v in zip(genes, values, strict=True)], rotation=90
    )
    ax.set_ylabel(label)
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.axhline(0, color="grey", linewidth=0.8, linestyle="--")
    return finish(ax, "perturbation_distribution", show=show, save=save, ax_given=ax_given)


def perturbation_heatmap(
    data: AnnData | MuData | dict,
    *,
    key: str = "geneformer_perturb",
    perturbed: Sequence[str] | None = None,
    n_perturbed: int = 15,
    n_affected: int = 30,
    cmap: str = "viridis",
    ax: Axes | None = None,
    show: bool | None = None,
    save: bool | str | None = None,
    mod: str = "rna",
) -> Axes | None:
    """Heatmap of the genes most affected by each perturbation (needs ``gene_shifts=True`` in ``perturb``).

    Cells hold the mean ``1 - cosine`` of the affected gene's embedding (columns) when the row's gene is
    perturbed, over the cells where both occur; blank where they never co-occur. Each row's label gives the number
    of cells its perturbation was seen in (``n=``).

    Parameters
    ----------
    data
        AnnData/MuData with the results in ``.uns[key]``, or the dict returned by :func:`~scgeneformer.tl.perturb`.
    key
        The ``key_added`` of :func:`~scgeneformer.tl.perturb`.
    perturbed
        Perturbations (rows) to show; default the ``n_perturbed`` with the largest mean effect on other genes.
    n_affected
        Columns: the genes with the largest mean effect over the rows shown.
    cmap, ax, show, save, mod
        As in :func:`~scgeneformer.pl.confusion_matrix`.

    Returns
    -------
    ``None`` when the figure is shown, else the axes.

    Examples
    --------
    >>> sgf.tl.perturb(adata, model, "all", gene_shifts=True, max_cells=20)  # doctest: +SKIP
    >>> sgf.pl.perturbation_heatmap(adata, n_perturbed=10)  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    results = PerturbationResults(data, key, mod)
    genes = results.gene_shifts()  # from a store: each (perturbed, affected) pair's mean over cells
    if genes.empty:
        msg = "The results hold no gene shifts: run sgf.tl.perturb(..., gene_shifts=True)."
        raise ValueError(msg)
    genes = genes.assign(effect=1.0 - genes["cosine"].astype(np.float64))
    matrix = genes.pivot_table(index="perturbed", columns="affected", values="effect", aggfunc="mean", observed=True)
    if perturbed is None:
        perturbed = list(matrix.mean(axis=1).sort_values(ascending=False).index[:n_perturbed])
    matrix = matrix.loc[list(perturbed)]
    columns = matrix.mean(axis=0).sort_values(ascending=False).index[:n_affected]
    matrix = matrix[columns]
    ax_given = ax is not None
    if ax is None:
        _, ax = plt.subplots(figsize=(0.3 * len(columns) + 3, 0.3 * len(matrix) + 2))
    image = ax.imshow(matrix.to_numpy(dtype=float), cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=90)
    # how many cells each row's perturbation was seen in: its mean rests on that many
    rows = results.cell_rows()
    n_cells = rows.groupby(rows["perturbed"].astype(str))["cell"].nunique()
    ax.set_yticks(range(len(matrix)), [f"{p} (n={n_cells.get(str(p), 0)})" for p in matrix.index])
    ax.set_xlabel("affected gene")
    ax.set_ylabel("perturbed gene")
    ax.figure.colorbar(image, ax=ax, label="1 - cosine of the affected gene")
    ax.set_title(
        f"mean effect on the {len(columns)} most affected genes of {len(matrix)} perturbations\n"
        "(n = cells each perturbation was seen in)"
    )
    return finish(ax, "perturbation_heatmap", show=show, save=save, ax_given=ax_given)
