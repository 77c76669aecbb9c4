"""``sgf.tl.perturbation_stats``: statistics over the per-cell results of :func:`~scgeneformer.tl.perturb`.

The numbers follow the reference's ``InSilicoPerturberStats`` on the same raw shifts: genes are taken in token order,
means are float64 means of the float32 shifts, p-values come from ``scipy.stats.ranksums``, FDRs are
Benjamini–Hochberg, and ties keep token order when sorting.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

from .._data._anndata import resolve_adata
from ._perturb_spec import GoalStates, genes_param_is_all

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData
    from mudata import MuData

StatsMode = Literal["goal_state_shift", "vs_null", "mixture_model", "aggregate_data", "aggregate_gene_shifts"]
MODES = ("goal_state_shift", "vs_null", "mixture_model", "aggregate_data", "aggregate_gene_shifts")
#: Size of the random sample of pooled shifts in ``goal_state_shift`` (the reference's speed-up of ranksums).
RANDOM_SAMPLE = 100_000


def perturbation_stats(
    data: AnnData | MuData | dict,
    mode: StatsMode = "mixture_model",
    *,
    key: str = "geneformer_perturb",
    null: AnnData | MuData | dict | None = None,
    value: str | None = None,
    alpha: float = 0.05,
    reference_quirks: bool = False,
    mod: str = "rna",
    inplace: bool = True,
) -> pd.DataFrame | None:
    """Which perturbations matter: tests and summaries of :func:`~scgeneformer.tl.perturb` results.

    Parameters
    ----------
    data
        The AnnData (or MuData) holding the results in ``.uns[key]``, or the dict of results
        (``perturb(..., inplace=False)``). Results written to a store (``perturb(..., out=path)``) are read from it
        part by part: only the cells' rows are loaded (``aggregate_gene_shifts`` sums the gene rows part by part).
    mode
        - ``"goal_state_shift"`` (goal-state mode): per gene, the mean shift toward the goal (and alternative)
          states; with ``genes="all"``, a two-sided Wilcoxon rank-sum test of the gene's shifts against the pooled
          shifts of all perturbed genes (a random sample of 100,000 when larger, seeded as the reference), with
          Benjamini–Hochberg FDR; ``significant`` = FDR < ``alpha``. Sorted by significance, then shift.
        - ``"vs_null"``: per gene, its shifts against the same gene's shifts in ``null`` (e.g. a run on random or
          control cells): mean of each, difference, rank-sum p-value (1 where undefined), FDR.
        - ``"mixture_model"`` (``genes="all"``): a two-component Gaussian mixture over the genes' mean cosines;
          ``impact`` marks genes in the component with the lower mean cosine (the larger effect), and
          ``impact_percent`` the share of cells where the gene's cosine falls in it. Sorted by impact, then cosine.
        - ``"aggregate_data"``: the per-cell values of each perturbation, one row per cell.
        - ``"aggregate_gene_shifts"``: per (perturbation, affected cell or gene), mean and standard deviation of the
          cosine and number of cells; the cell rows first, then by mean cosine (largest effects first).
    key
        The ``key_added`` of :func:`~scgeneformer.tl.perturb`.
    null
        Results of the null run for ``"vs_null"`` (AnnData/MuData with the same ``key``, or the returned dict).
    value
        Column of the per-cell table tested by ``"vs_null"``; default the shift toward the goal state in
        goal-state mode, else ``cosine``.
    alpha
        FDR threshold of ``significant``.
    reference_quirks
        ``"mixture_model"``: take the mixture's first component as the impact component, as the reference does,
        instead of the one with the lower mean (they agree whenever the first component has the lower mean).
    mod
        Modality used when ``data`` is a MuData.
    inplace
        With an AnnData: store the table in ``.uns[key][f"stats_{mode}"]`` and return ``None``; with
        ``inplace=False`` (or a dict of results), return it.

    Returns
    -------
    With ``inplace=False`` or a dict of results: a DataFrame. Columns use the perturbation table's names
    (``perturbed``, ``perturbed_id``, ``perturbed_token``, ``affected``…); the reference's ``Shift_to_goal_end``,
    ``Goal_end_vs_random_pval``, ``Goal_end_FDR``, ``N_Detections`` and ``Sig`` are ``shift_to_goal``,
    ``pval_goal``, ``fdr_goal``, ``n_detections`` and ``significant`` (alternative states: ``shift_to_<state>``,
    ``pval_<state>``, ``fdr_<state>``); ``Test_avg_shift`` is ``cosine_mean`` (mixture model) or ``test_mean``
    (vs null).

    Examples
    --------
    >>> treatment = {"state_key": "condition", "start_state": "stim", "goal_state": "ctrl"}
    >>> sgf.tl.perturb(adata, model, "all", states=treatment)  # doctest: +SKIP
    >>> stats = sgf.tl.perturbation_stats(adata, "goal_state_shift", inplace=False)  # doctest: +SKIP
    >>> stats[stats["significant"] == 1].head()  # doctest: +SKIP
    """
    if mode not in MODES:
        msg = f"mode must be one of {MODES}, got {mode!r}."
        raise ValueError(msg)
    results, adata = perturbation_results(data, key, mod)
    params = dict(results.get("params", {}))
    genes_all = genes_param_is_all(params)
    states = GoalStates.from_params(params.get("states"))
    if mode == "aggregate_gene_shifts":
        cell_rows = None  # reads the gene rows too, part by part for a store
    else:
        cell_rows = result_cell_rows(results)
    if mode == "goal_state_shift":
        if states is None:
            msg = "goal_state_shift needs results of a goal-state run (perturb with states=...)."
            raise ValueError(msg)
        out = goal_state_shift(cell_rows, states, genes_all=genes_all, alpha=alpha)
    elif mode == "vs_null":
        if null is None:
            msg = "vs_null needs the results of a null run: pass null=."
            raise ValueError(msg)
        null_results, _ = perturbation_results(null, key, mod)
        column = value or (states.column(states.goal_state) if states is not None else "cosine")
        out = vs_null(cell_rows, result_cell_rows(null_results), column, alpha=alpha)
    elif mode == "mixture_model":
        if not genes_all:
            msg = "mixture_model needs many perturbed genes: run perturb with genes='all'."
            raise ValueError(msg)
        out = mixture_model(cell_rows, reference_quirks=reference_quirks)
    elif mode == "aggregate_data":
        columns = ["cell", "perturbed", "perturbed_id", "cosine"] + [c for c in cell_rows if c.startswith("shift_")]
        out = cell_rows[columns].reset_index(drop=True)
    elif "cells" in results:
        out = aggregate_gene_shifts(results["cells"])
    else:
        out = aggregate_gene_shifts_store(_store(results))
    if adata is None or not inplace:
        return out
    adata.uns[key][f"stats_{mode}"] = out
    return None


def perturbation_results(data, key: str = "geneformer_perturb", mod: str = "rna") -> tuple[dict, AnnData | None]:
    """Results of :func:`~scgeneformer.tl.perturb`, given as the returned dict or as the AnnData/MuData holding them.

    Returns the results and the AnnData they were read from (``None`` for a dict).
    """
    if isinstance(data, dict):
        if "cells" not in data and "path" not in data:
            msg = "Pass perturbation results: the dict returned by sgf.tl.perturb, or the AnnData holding them."
            raise ValueError(msg)
        return data, None
    adata = resolve_adata(data, mod)
    if key not in adata.uns or not ({"cells", "path"} & set(adata.uns[key])):
        msg = f"No perturbation results in .uns[{key!r}]; run sgf.tl.perturb(adata, model, ...) first."
        raise KeyError(msg)
    return adata.uns[key], adata


def _store(results: dict):
    from ._perturb_store import PerturbationStore

    return PerturbationStore(results["path"])


def result_cell_rows(results: dict) -> pd.DataFrame:
    """The rows of whole cells (``affected == "cell"``) of perturbation results, in memory or in a store.

    From a store (``perturb(..., out=path)``) only these rows are read, a part at a time: the gene rows of a large
    screen never are.
    """
    if "cells" in results:
        table = results["cells"]
        return table[table["affected"] == "cell"]
    return _store(results).read(cell_rows=True)


def read_perturbation_store(path) -> dict:
    """Results that :func:`~scgeneformer.tl.perturb` wrote to ``out=path``, as the dict it returns in memory.

    Parameters
    ----------
    path
        The store's folder.

    Returns
    -------
    ``{"cells": the whole table, "genes": the summary, "params": the run's parameters}``. The table of a large
    screen may not fit in memory: :func:`~scgeneformer.tl.perturbation_stats` reads stores part by part instead.

    Examples
    --------
    >>> sgf.tl.perturb(adata, model, "all", out="screen.parquet")  # doctest: +SKIP
    >>> results = sgf.tl.read_perturbation_store("screen.parquet")  # doctest: +SKIP
    """
    import pandas as pd

    from ._perturb_store import PerturbationStore

    store = PerturbationStore(path)
    summary_path = store.path / "summary.parquet"
    genes = pd.read_parquet(summary_path) if summary_path.is_file() else None
    params = {k: v for k, v in store.manifest["identity"].items() if k not in ("model_weights", "state_embeddings")}
    return {"cells": store.read(), "genes": genes, "params": params}


def aggregate_gene_shifts_store(store) -> pd.DataFrame:
    """:func:`aggregate_gene_shifts` of a store, one part in memory at a time (float64 sums; std from them)."""
    import pandas as pd

    from ._perturb_store import grouped_sums

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
    gene_keys = pd.unique(totals["perturbed_token"].to_numpy())
    rank_of_gene = dict(zip(gene_keys[_token_order(gene_keys)], range(len(gene_keys)), strict=True))
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
    out["_rank"] = [rank_of_gene[p] for p in out["perturbed_token"]]
    out = out.sort_values("_rank", kind="stable")  # perturbations in token order, pairs by first appearance
    out["_cell"] = out["affected_token"] == -1
    out = out.sort_values(["_cell", "cosine_mean"], ascending=[False, True], kind="stable")
    return out.drop(columns=["_cell", "_rank"]).reset_index(drop=True)


def _token_order(tokens: Sequence[str]) -> np.ndarray:
    """Positions that sort ``"t1,t2"`` token strings as the reference sorts its token (tuple) keys."""
    keys = [tuple(int(t) for t in str(s).split(",")) for s in tokens]
    return np.array(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)


def _by_gene(rows: pd.DataFrame, column: str) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """Genes in token order (with names) and each gene's float64 values in table order."""
    import pandas as pd

    codes, uniques = pd.factorize(rows["perturbed_token"].astype(str))
    order = _token_order(uniques)
    values = rows[column].to_numpy(dtype=np.float64)
    groups = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[groups], np.arange(len(uniques) + 1))
    per_gene = [values[groups[bounds[i] : bounds[i + 1]]] for i in range(len(uniques))]
    _, first = np.unique(codes, return_index=True)  # each gene's first row
    genes = pd.DataFrame(
        {
            "perturbed_token": [str(uniques[i]) for i in order],
            "perturbed": [str(rows["perturbed"].iloc[first[i]]) for i in order],
            "perturbed_id": [str(rows["perturbed_id"].iloc[first[i]]) for i in order],
        }
    )
    return genes, [per_gene[i] for i in order]


def _fdr(pvalues) -> np.ndarray:
    from scipy.stats import false_discovery_control

    pvalues = np.asarray(pvalues, dtype=np.float64)
    return false_discovery_control(pvalues, method="bh") if len(pvalues) else pvalues


def goal_state_shift(
    cell_rows: pd.DataFrame, states: GoalStates, *, genes_all: bool, alpha: float = 0.05
) -> pd.DataFrame:
    """Mean shift toward the goal and alternative states per gene; rank-sum test against all genes' shifts."""
    import random

    from scipy.stats import ranksums

    # alternative states by their column key (state names with "/" are written with "_")
    alts = states.keys[2:]
    genes, goal_values = _by_gene(cell_rows, states.column(states.goal_state))
    alt_values = {alt: _by_gene(cell_rows, f"shift_{alt}")[1] for alt in alts}
    genes["shift_to_goal"] = [v.mean() for v in goal_values]
    for alt in alts:
        genes[f"shift_to_{alt}"] = [v.mean() for v in alt_values[alt]]
    if not genes_all:
        return genes.sort_values("shift_to_goal", ascending=False, kind="stable").reset_index(drop=True)

    def pooled_sample(per_gene: list[np.ndarray]) -> list[float]:
        pooled = np.concatenate(per_gene).tolist()
        if len(pooled) > RANDOM_SAMPLE:
            # the reference seeds Python's global RNG with 42; a private generator gives the same draw
            pooled = random.Random(42).sample(pooled, k=RANDOM_SAMPLE)
        return pooled

    random_goal = pooled_sample(goal_values)
    genes["pval_goal"] = [ranksums(random_goal, v).pvalue for v in goal_values]
    for alt in alts:
        random_alt = pooled_sample(alt_values[alt])
        genes[f"pval_{alt}"] = [ranksums(random_alt, v).pvalue for v in alt_values[alt]]
    genes["fdr_goal"] = _fdr(genes["pval_goal"])
    for alt in alts:
        genes[f"fdr_{alt}"] = _fdr(genes[f"pval_{alt}"])
    genes["n_detections"] = [len(v) for v in goal_values]
    genes["significant"] = (genes["fdr_goal"] < alpha).astype(int)
    genes = genes.sort_values(
        ["significant", "shift_to_goal", "fdr_goal"], ascending=[False, False, True], kind="stable"
    )
    return genes.reset_index(drop=True)


def vs_null(cell_rows: pd.DataFrame, null_rows: pd.DataFrame, column: str, *, alpha: float = 0.05) -> pd.DataFrame:
    """Each gene's values against the same gene's values in a null run (rank-sum test, BH FDR)."""
    import warnings

    from scipy.stats import ranksums

    for name, rows in (("results", cell_rows), ("null", null_rows)):
        if column not in rows.columns:
            msg = f"The {name} table has no column {column!r}."
            raise KeyError(msg)
    genes, test_values = _by_gene(cell_rows, column)
    null_genes, null_per_gene = _by_gene(null_rows, column)
    null_of = dict(zip(null_genes["perturbed_token"], null_per_gene, strict=True))
    empty = np.empty(0)
    nulls = [null_of.get(token, empty) for token in genes["perturbed_token"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mean of a gene absent from the null run
        genes["test_mean"] = [v.mean() for v in test_values]
        genes["null_mean"] = [v.mean() if len(v) else np.nan for v in nulls]
        pvalues = [
            ranksums(t, n, nan_policy="omit").pvalue if len(n) else np.nan
            for t, n in zip(test_values, nulls, strict=True)
        ]
    genes["test_minus_null"] = genes["test_mean"] - genes["null_mean"]
    genes["pval"] = np.nan_to_num(np.asarray(pvalues, dtype=np.float64), nan=1.0)
    genes["fdr"] = _fdr(genes["pval"])
    genes["n_test"] = [len(v) for v in test_values]
    genes["n_null"] = [len(v) for v in nulls]
    genes["significant"] = (genes["fdr"] < alpha).astype(int)
    genes = genes.sort_values(["significant", "test_minus_null", "fdr"], ascending=[False, False, True], kind="stable")
    return genes.reset_index(drop=True)


def mixture_model(cell_rows: pd.DataFrame, *, reference_quirks: bool = False) -> pd.DataFrame:
    """Two-component Gaussian mixture over the genes' mean cosines: which perturbations have an impact."""
    from sklearn.mixture import GaussianMixture

    genes, values = _by_gene(cell_rows, "cosine")
    if len(genes) < 2:
        msg = f"mixture_model needs at least two perturbed genes, got {len(genes)}."
        raise ValueError(msg)
    means = np.array([v.mean() for v in values])
    mixture = GaussianMixture(n_components=2, random_state=0).fit(means.reshape(-1, 1))
    impact = 0 if reference_quirks else int(np.argmin(mixture.means_[:, 0]))
    impact_border, other_border = mixture.means_[impact, 0], mixture.means_[1 - impact, 0]

    def in_impact(x: np.ndarray) -> np.ndarray:
        # Beyond either component's mean the side decides; between them, the mixture's prediction.
        predicted = mixture.predict(x.reshape(-1, 1)) == impact
        return np.where(x > other_border, False, np.where(x < impact_border, True, predicted))

    genes["cosine_mean"] = means
    genes["impact"] = in_impact(means).astype(int)
    genes["impact_percent"] = [in_impact(v).mean() * 100 for v in values]
    genes["n_detections"] = [len(v) for v in values]
    genes = genes.sort_values(["impact", "cosine_mean"], ascending=[False, True], kind="stable")
    return genes.reset_index(drop=True)


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
    gene_keys = pd.unique(perturbed[first])
    rank_of_gene = dict(zip(gene_keys[_token_order(gene_keys)], range(len(gene_keys)), strict=True))
    perturbation_rank = np.array([rank_of_gene[p] for p in perturbed[first]], dtype=np.int64)
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
    out["_cell"] = out["affected_token"] == -1
    out = out.sort_values(["_cell", "cosine_mean"], ascending=[False, True], kind="stable")
    return out.drop(columns="_cell").reset_index(drop=True)
