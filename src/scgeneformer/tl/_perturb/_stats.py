"""``sgf.tl.perturbation_stats``: statistics over the per-cell results of :func:`~scgeneformer.tl.perturb`.

The numbers follow the reference's ``InSilicoPerturberStats`` on the same raw shifts: genes are taken in token order,
means are float64 means of the float32 shifts, p-values come from ``scipy.stats.ranksums``, FDRs are
Benjamini–Hochberg, and ties keep token order when sorting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from ._results import PerturbationResults
from ._summaries import aggregate_gene_shifts, aggregate_gene_shifts_store, token_order

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData
    from mudata import MuData

    from ._spec import GoalStates

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
    min_cells: int = 1,
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
          Benjamini–Hochberg FDR; ``significant`` (boolean) = FDR < ``alpha``. Sorted by significance, then shift.
        - ``"vs_null"``: per gene, its shifts against the same gene's shifts in ``null`` (e.g. a run on random or
          control cells): mean of each, difference, rank-sum p-value (1 where undefined), FDR.
        - ``"mixture_model"`` (``genes="all"``): a two-component Gaussian mixture over the genes' mean cosines;
          ``impact`` marks genes in the component with the lower mean cosine (the larger effect), and
          ``impact_percent`` the share of cells where the gene's cosine falls in it. Sorted by impact, then cosine.
          On a run with ``anchor_gene``: one row per test gene with the reference's combination statistics, means
          over the cells of the gene's cosines: ``anchor_shift`` (the anchor alone; the reference's
          ``Anchor_shift``), ``test_token_shift`` (the gene alone; ``Test_token_shift``), ``sum_of_indiv_shifts``
          = 1 − ((1 − a) + (1 − t)) per cell (``Sum_of_indiv_shifts``: the cosine if the two effects added up),
          ``combo_shift`` (both together; ``Combo_shift``) and ``combo_minus_sum_shift`` = combo − sum per cell
          (``Combo_minus_sum_shift``: negative when the pair does more than the sum of its parts). The mixture is
          fitted to the genes' mean ``combo_shift``; sorted by impact, then ``combo_minus_sum_shift``.
        - ``"aggregate_data"``: the per-cell values of each perturbation, one row per cell.
        - ``"aggregate_gene_shifts"``: per (perturbation, affected cell or gene), mean and standard deviation of the
          cosine and number of cells; the cell rows first, then by mean cosine (largest effects first).

        On a two-stage screen (``perturb(..., screen="two_stage")``) the per-gene tables add ``n_confirmed``, the
        cells in which the gene's value is exact (the others are stage-1 estimates), and ``aggregate_data`` the
        ``confirmed`` column.
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
    min_cells
        Leave out of the table genes seen in fewer cells (``n_detections``; ``n_test`` for ``"vs_null"``), so that
        a gene seen in one cell does not top a ranking by chance. The statistics themselves are computed over all
        genes first (the pooled background, the mixture fit and the FDR are those of the full table), as in the
        reference. Applies to the ranked modes (all but ``"aggregate_data"``).
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
    >>> stats[stats["significant"]].head()  # doctest: +SKIP
    """
    if mode not in MODES:
        msg = f"mode must be one of {MODES}, got {mode!r}."
        raise ValueError(msg)
    if isinstance(min_cells, bool) or not isinstance(min_cells, int | np.integer) or min_cells < 1:
        msg = f"min_cells must be a positive integer, got {min_cells!r}."
        raise ValueError(msg)
    results = PerturbationResults(data, key, mod)
    states = results.states
    if mode == "aggregate_gene_shifts":
        cell_rows = None  # reads the gene rows too, part by part for a store
    else:
        cell_rows = results.cell_rows()
    if mode == "goal_state_shift":
        if states is None:
            msg = "goal_state_shift needs results of a goal-state run (perturb with states=...)."
            raise ValueError(msg)
        out = goal_state_shift(cell_rows, states, genes_all=results.genes_all, alpha=alpha)
    elif mode == "vs_null":
        if null is None:
            msg = "vs_null needs the results of a null run: pass null=."
            raise ValueError(msg)
        null_results = PerturbationResults(null, key, mod)
        column = value or (states.column(states.goal_state) if states is not None else "cosine")
        out = vs_null(cell_rows, null_results.cell_rows(), column, alpha=alpha)
    elif mode == "mixture_model":
        if not results.genes_all:
            msg = "mixture_model needs many perturbed genes: run perturb with genes='all'."
            raise ValueError(msg)
        if results.params.get("anchor_token") is not None:
            out = combination_mixture_model(cell_rows, reference_quirks=reference_quirks)
        else:
            out = mixture_model(cell_rows, reference_quirks=reference_quirks)
    elif mode == "aggregate_data":
        columns = ["cell", "perturbed", "perturbed_id", "cosine"] + [c for c in cell_rows if c.startswith("shift_")]
        columns += ["confirmed"] if "confirmed" in cell_rows else []  # two-stage screens: exact or estimate
        out = cell_rows[columns].reset_index(drop=True)
    elif results.store is None:
        out = aggregate_gene_shifts(results.results["cells"])
    else:
        out = aggregate_gene_shifts_store(results.store)
    if cell_rows is not None and "confirmed" in cell_rows and "perturbed_token" in out:
        # two-stage screens: in how many cells each gene's value is exact (the rest are stage-1 estimates)
        confirmed = cell_rows.groupby(cell_rows["perturbed_token"].astype(str), observed=True)["confirmed"].sum()
        out["n_confirmed"] = confirmed.reindex(out["perturbed_token"].astype(str)).fillna(0).to_numpy(np.int64)
    if mode != "aggregate_data" and min_cells > 1:
        if mode == "vs_null":
            counts = out["n_test"].to_numpy()
        elif "n_detections" in out:
            counts = out["n_detections"].to_numpy()
        else:  # goal_state_shift of a gene list reports no counts
            per_token = cell_rows["perturbed_token"].astype(str).value_counts()
            counts = per_token.reindex(out["perturbed_token"].astype(str)).to_numpy()
        out = out[counts >= min_cells].reset_index(drop=True)
    adata = results.adata
    if adata is None or not inplace:
        return out
    adata.uns[key][f"stats_{mode}"] = out
    return None


def _by_gene(rows: pd.DataFrame, column: str) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """Genes in token order (with names) and each gene's float64 values in table order."""
    import pandas as pd

    codes, uniques = pd.factorize(rows["perturbed_token"].astype(str))
    order = token_order(uniques)
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
    genes["significant"] = (genes["fdr_goal"] < alpha).to_numpy(dtype=bool)
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
    genes["significant"] = (genes["fdr"] < alpha).to_numpy(dtype=bool)
    genes = genes.sort_values(["significant", "test_minus_null", "fdr"], ascending=[False, False, True], kind="stable")
    return genes.reset_index(drop=True)


def mixture_model(cell_rows: pd.DataFrame, *, reference_quirks: bool = False) -> pd.DataFrame:
    """Two-component Gaussian mixture over the genes' mean cosines: which perturbations have an impact."""
    genes, values = _by_gene(cell_rows, "cosine")
    if len(genes) < 2:
        msg = f"mixture_model needs at least two perturbed genes, got {len(genes)}."
        raise ValueError(msg)
    means = np.array([v.mean() for v in values])
    in_impact = _impact_classifier(means, reference_quirks=reference_quirks)
    genes["cosine_mean"] = means
    genes["impact"] = in_impact(means).astype(int)
    genes["impact_percent"] = [in_impact(v).mean() * 100 for v in values]
    genes["n_detections"] = [len(v) for v in values]
    genes = genes.sort_values(["impact", "cosine_mean"], ascending=[False, True], kind="stable")
    return genes.reset_index(drop=True)


def _impact_classifier(means: np.ndarray, *, reference_quirks: bool):
    """A two-component Gaussian mixture fitted to the genes' mean cosines: whether values fall in the impact one."""
    from sklearn.mixture import GaussianMixture

    mixture = GaussianMixture(n_components=2, random_state=0).fit(means.reshape(-1, 1))
    impact = 0 if reference_quirks else int(np.argmin(mixture.means_[:, 0]))
    impact_border, other_border = mixture.means_[impact, 0], mixture.means_[1 - impact, 0]

    def in_impact(x: np.ndarray) -> np.ndarray:
        # Beyond either component's mean the side decides; between them, the mixture's prediction.
        predicted = mixture.predict(x.reshape(-1, 1)) == impact
        return np.where(x > other_border, False, np.where(x < impact_border, True, predicted))

    return in_impact


def combination_mixture_model(cell_rows: pd.DataFrame, *, reference_quirks: bool = False) -> pd.DataFrame:
    """The reference's combination statistics (``combos=1``) of an ``anchor_gene`` run, one row per test gene.

    In each cell, a test gene's pair cosine (``combo``) is set against the anchor's cosine alone (``a``) and the
    gene's alone (``t``) in the same cell; per gene, the means over cells of ``a``, ``t``, ``1 - ((1 - a) + (1 -
    t))``, ``combo`` and ``combo - (1 - ((1 - a) + (1 - t)))``. The mixture is fitted to the genes' mean combo.
    """
    import pandas as pd

    if "combination" not in cell_rows:
        msg = "The results have no 'combination' column: re-run sgf.tl.perturb with anchor_gene to get all parts."
        raise ValueError(msg)
    kind = cell_rows["combination"].astype(str).to_numpy()
    cells = cell_rows["cell"].astype(str).to_numpy()
    values = cell_rows["cosine"].to_numpy(dtype=np.float64)
    tokens = cell_rows["perturbed_token"].astype(str).to_numpy()
    anchor_of = dict(zip(cells[kind == "anchor"], values[kind == "anchor"], strict=True))
    single = kind == "gene"
    alone_of = dict(zip(zip(cells[single], tokens[single], strict=True), values[single], strict=True))
    pairs = cell_rows[kind == "anchor+gene"]
    pair_cells = cells[kind == "anchor+gene"]
    test_tokens = np.array([t.split(",")[1] for t in tokens[kind == "anchor+gene"]], dtype=object)
    first_rows = cell_rows[single].drop_duplicates("perturbed_token")
    names = first_rows.set_index(first_rows["perturbed_token"].astype(str))
    table = pd.DataFrame(
        {
            "cell": pair_cells,
            "perturbed_token": test_tokens,
            "a": [anchor_of[c] for c in pair_cells],
            "t": [alone_of[(c, g)] for c, g in zip(pair_cells, test_tokens, strict=True)],
            "combo": pairs["cosine"].to_numpy(dtype=np.float64),
        }
    )
    table["sum"] = 1 - ((1 - table["a"]) + (1 - table["t"]))
    table["combo_minus_sum"] = table["combo"] - table["sum"]
    codes, uniques = pd.factorize(table["perturbed_token"])
    order = token_order(uniques)
    groups = [np.flatnonzero(codes == i) for i in order]
    genes = pd.DataFrame(
        {
            "perturbed_token": [str(uniques[i]) for i in order],
            "perturbed": [str(names.loc[uniques[i], "perturbed"]) for i in order],
            "perturbed_id": [str(names.loc[uniques[i], "perturbed_id"]) for i in order],
        }
    )
    columns = {
        "anchor_shift": "a",
        "test_token_shift": "t",
        "sum_of_indiv_shifts": "sum",
        "combo_shift": "combo",
        "combo_minus_sum_shift": "combo_minus_sum",
    }
    for name, column in columns.items():
        x = table[column].to_numpy()
        genes[name] = [x[g].mean() for g in groups]
    if len(genes) < 2:
        msg = f"mixture_model needs at least two test genes, got {len(genes)}."
        raise ValueError(msg)
    combos = table["combo"].to_numpy()
    in_impact = _impact_classifier(genes["combo_shift"].to_numpy(), reference_quirks=reference_quirks)
    genes["impact"] = in_impact(genes["combo_shift"].to_numpy()).astype(int)
    genes["impact_percent"] = [in_impact(combos[g]).mean() * 100 for g in groups]
    genes["n_detections"] = [len(g) for g in groups]
    genes = genes.sort_values(["impact", "combo_minus_sum_shift"], ascending=[False, True], kind="stable")
    return genes.reset_index(drop=True)
