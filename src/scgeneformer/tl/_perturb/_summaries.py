"""Summaries of perturbation results, from a table in memory or from a store one part at a time, ordered alike.

- :func:`summarize` / :func:`summarize_store`: per perturbation, its cells' number and mean cosine and shifts (the
  ``genes`` table of :func:`~scgeneformer.tl.perturb`), ordered by :func:`order_summary`;
- :func:`aggregate_gene_shifts` / :func:`aggregate_gene_shifts_store`: per (perturbation, affected cell or gene),
  the cosine's mean, standard deviation and count, ordered by :func:`cells_first_by_cosine`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ._store import grouped_sums

if TYPE_CHECKING:
    import pandas as pd

    from ._store import PerturbationStore


def summarize(cell_rows: pd.DataFrame, state_columns: Sequence[str], *, min_cells: int = 1) -> pd.DataFrame:
    """Per-perturbation summary of the cell rows of a perturbation table (the ``genes`` table of ``perturb``).

    Perturbations of fewer than ``min_cells`` cells are left out.
    """
    import pandas as pd

    rows = cell_rows[cell_rows["affected"] == "cell"]
    keys = ["perturbed", "perturbed_id", "perturbed_token"]
    aggregations = {"n_cells": ("cosine", "size"), "cosine_mean": ("cosine", "mean")}
    for column in state_columns:
        aggregations[f"{column}_mean"] = (column, "mean")
    if "confirmed" in rows.columns:  # two-stage screens: in how many of its cells each row is exact
        aggregations["n_confirmed"] = ("confirmed", "sum")
    summary = rows.groupby(keys, observed=True, sort=False).agg(**aggregations).reset_index()
    for column in keys:
        summary[column] = summary[column].astype(str)
    return order_summary(pd.DataFrame(summary), state_columns, min_cells=min_cells)


def summarize_store(store: PerturbationStore, state_columns: Sequence[str], *, min_cells: int = 1) -> pd.DataFrame:
    """The per-perturbation summary of :func:`summarize`, one part in memory at a time."""
    import pandas as pd

    keys = ["perturbed", "perturbed_id", "perturbed_token"]
    values = ["cosine", *state_columns]
    two_stage = "screen" in store.manifest["identity"]
    columns = [*keys, *values, *(["confirmed"] if two_stage else [])]
    parts = (p.astype(dict.fromkeys(keys, str)) for p in store.iter_parts(columns, cell_rows=True))
    totals = grouped_sums(parts, keys, [*values, *(["confirmed"] if two_stage else [])])
    if totals is None:
        return pd.DataFrame(columns=[*keys, "n_cells", "cosine_mean"])
    summary = pd.DataFrame(index=totals.index)
    summary["n_cells"] = totals["_n"].astype(np.int64)
    for column in values:
        summary[f"{column}_mean"] = (totals[f"{column}_sum"] / totals["_n"]).astype(np.float32)
    if two_stage:
        summary["n_confirmed"] = totals["confirmed_sum"].astype(np.int64)
    return order_summary(summary.reset_index(), state_columns, min_cells=min_cells)


def order_summary(summary: pd.DataFrame, state_columns: Sequence[str], *, min_cells: int = 1) -> pd.DataFrame:
    """``summary`` with the strongest effects first; ties keep their order; fewer cells than ``min_cells``: left out.

    A gene seen in one cell would otherwise top the ranking by chance. In goal-state mode by the mean shift toward
    the goal state (largest first), else by the mean cosine (smallest first).
    """
    summary = summary[summary["n_cells"] >= min_cells]
    if len(state_columns) > 1:
        summary = summary.sort_values(f"{state_columns[1]}_mean", ascending=False, kind="stable")
    else:
        summary = summary.sort_values("cosine_mean", kind="stable")
    return summary.reset_index(drop=True)


def aggregate_gene_shifts(table: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation and count of the cosine per (perturbation, affected cell or gene)."""
    import pandas as pd

    perturbed = table["perturbed_token"].astype(str).to_numpy()
    affected = table["affected_token"].to_numpy(dtype=np.int64)
    pair_codes, pairs = pd.factorize(pd.MultiIndex.from_arrays([perturbed, affected]))
    values = table["cosine"].to_numpy(dtype=np.float64)
    groups = np.argsort(pair_codes, kind="stable")
    bounds = np.searchsorted(pair_codes[groups], np.arange(len(pairs) + 1))
    _, first = np.unique(pair_codes, return_index=True)  # each pair's first row
    # reference order before sorting: perturbations in token order, affected in order of first appearance
    perturbation_rank = token_ranks(perturbed[first])
    order = np.lexsort((first, perturbation_rank))
    rows = []
    for code in order:
        group = values[groups[bounds[code] : bounds[code + 1]]]
        rows.append((group.mean(), group.std(), len(group)))
    source = table.iloc[first[order]]
    out = pd.DataFrame(
        {
            "perturbed_token": source["perturbed_token"].astype(str).to_numpy(),
            "perturbed": source["perturbed"].astype(str).to_numpy(),
            "perturbed_id": source["perturbed_id"].astype(str).to_numpy(),
            "affected": source["affected"].astype(str).to_numpy(),
            "affected_id": source["affected_id"].astype(str).to_numpy(),
            "affected_token": source["affected_token"].to_numpy(),
            "cosine_mean": [r[0] for r in rows],
            "cosine_std": [r[1] for r in rows],
            "n_detections": [r[2] for r in rows],
        }
    )
    return cells_first_by_cosine(out)


def aggregate_gene_shifts_store(store: PerturbationStore) -> pd.DataFrame:
    """:func:`aggregate_gene_shifts` of a store, one part in memory at a time (float64 sums; std from them)."""
    import pandas as pd

    keys = ["perturbed_token", "affected_token"]
    names = ["perturbed", "perturbed_id", "affected", "affected_id"]
    parts = (
        p.astype(dict.fromkeys(["perturbed_token", *names], str)) for p in store.iter_parts([*keys, *names, "cosine"])
    )
    totals = grouped_sums(parts, keys, ["cosine"], squares=True, first=names)
    if totals is None:
        return pd.DataFrame()
    totals = totals.reset_index().sort_values("_first", kind="stable")
    mean = totals["cosine_sum"] / totals["_n"]
    std = np.sqrt(np.maximum(totals["cosine_sumsq"] / totals["_n"] - mean**2, 0.0))
    out = pd.DataFrame(
        {
            "perturbed_token": totals["perturbed_token"].to_numpy(),
            "perturbed": totals["perturbed"].to_numpy(),
            "perturbed_id": totals["perturbed_id"].to_numpy(),
            "affected": totals["affected"].to_numpy(),
            "affected_id": totals["affected_id"].to_numpy(),
            "affected_token": totals["affected_token"].to_numpy(),
            "cosine_mean": mean.to_numpy(),
            "cosine_std": std.to_numpy(),
            "n_detections": totals["_n"].astype(np.int64).to_numpy(),
        }
    )
    # perturbations in token order, pairs by first appearance
    out = out.iloc[np.argsort(token_ranks(out["perturbed_token"].to_numpy()), kind="stable")]
    return cells_first_by_cosine(out)


def cells_first_by_cosine(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of whole cells (``affected_token == -1``) first, then by mean cosine (largest effects first); stable."""
    table = table.assign(_cell=table["affected_token"] == -1)
    table = table.sort_values(["_cell", "cosine_mean"], ascending=[False, True], kind="stable")
    return table.drop(columns="_cell").reset_index(drop=True)


def token_ranks(tokens: np.ndarray) -> np.ndarray:
    """For each ``"t1,t2"`` token string, the rank of its perturbation in the reference's order of token keys."""
    import pandas as pd

    keys = pd.unique(tokens)
    rank_of = dict(zip(keys[token_order(keys)], range(len(keys)), strict=True))
    return np.array([rank_of[t] for t in tokens], dtype=np.int64)


def token_order(tokens: Sequence[str]) -> np.ndarray:
    """Positions that sort ``"t1,t2"`` token strings as the reference sorts its token (tuple) keys."""
    keys = [tuple(int(t) for t in str(s).split(",")) for s in tokens]
    return np.array(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)
