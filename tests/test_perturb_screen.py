"""Two-stage screens (issue 21): stage-1 estimates, exact confirmations, stores, goal states, refusals."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import N_FAKE_GENES, encoded_counts, fake_gene_id, make_vocabulary, tiny_model

import scgeneformer as sgf
from scgeneformer.tl._perturb import _planning, _two_stage
from scgeneformer.tl._perturb._engine import EngineSpec
from scgeneformer.tl._perturb._estimate import (
    anchor_positions,
    estimate_deletions,
    estimate_overexpressions,
    overexpression_anchors,
)
from scgeneformer.tl._perturb._two_stage import FirstStage, TwoStageScreen, choose_candidates

QUIET = {"accelerator": "cpu", "progress_bar": False}


@pytest.fixture
def setup(vocab):
    adata = encoded_counts(vocab, n_obs=12, seed=5)
    adata.obs["state"] = pd.Categorical(np.array(["a", "b", "c"])[np.arange(adata.n_obs) % 3])
    return adata, tiny_model(vocab, layers=3), vocab


def screen(adata, model, vocab, **kwargs):
    options = {"vocabulary": vocab, "inplace": False, "execution": QUIET, "max_cells": 6} | kwargs
    return sgf.tl.perturb(adata, model, "all", **options)


def cell_rows(result) -> pd.DataFrame:
    table = result["cells"]
    return table[table["affected"].astype(str) == "cell"].reset_index(drop=True)


@pytest.mark.parametrize(
    "options",
    [{}, {"cell_cosine": "gene_mean"}, {"states": {"state_key": "state", "start_state": "a", "goal_state": "b"}}],
)
def test_confirmed_rows_are_the_exact_screens_values(setup, options):
    adata, model, vocab = setup
    exact = screen(adata, model, vocab, **options)
    result = screen(adata, model, vocab, screen="two_stage", n_confirm=4, n_confirm_genes=3, **options)
    got, expected = cell_rows(result), cell_rows(exact)
    # every perturbation is reported, in the exact screen's order; the exact table has no `confirmed` column
    assert "confirmed" not in exact["cells"]
    for column in ("cell", "perturbed", "perturbed_token"):
        assert got[column].astype(str).tolist() == expected[column].astype(str).tolist()
    confirmed = got["confirmed"].to_numpy()
    assert confirmed.dtype == bool and 0 < confirmed.sum() < len(confirmed)
    value_columns = ["cosine", *[c for c in got if c.startswith("shift_")]]
    for column in value_columns:  # equal up to float rounding (stage 2 batches the deletions differently)
        np.testing.assert_allclose(got.loc[confirmed, column], expected.loc[confirmed, column], rtol=0, atol=3e-7)
    # at least n_confirm per cell, and the top genes across cells in all their cells
    assert (got.groupby("cell", observed=True)["confirmed"].sum() >= 4).all()
    summary = result["genes"]
    assert {"n_cells", "n_confirmed"} <= set(summary)
    assert (summary["n_confirmed"] == summary["n_cells"]).sum() >= 3  # the top genes by estimate, in all their cells
    assert result["params"]["screen"]["method"] == "two_stage"
    assert result["params"]["screen"]["n_confirmed"] == int(confirmed.sum())


def test_stage_two_confirms_the_strongest_genes_across_cells_where_not_exact_yet():
    # two cells: job 0 holds tokens 10, 11, 12, 13; job 1 holds 12, 13, 14; stage 1 ran job 0's token 11 exactly
    first = {
        0: FirstStage(np.array([0.9, 0.5, 0.99, 0.7]), None, np.array([False, True, False, False])),
        1: FirstStage(np.array([0.8, 0.95, 0.6]), None, np.zeros(3, dtype=bool)),
    }
    labels = {0: [(10,), (11,), (12,), (13,)], 1: [(12,), (13,), (14,)]}
    # mean 1 - cosine over cells: 10: 0.1, 11: 0.5, 12: 0.105, 13: 0.175, 14: 0.4
    chosen = choose_candidates(first, labels, TwoStageScreen(1, 1), goal_column=None)  # 11: already exact
    assert chosen[0].tolist() == [] and chosen[1].tolist() == []
    chosen = choose_candidates(first, labels, TwoStageScreen(1, 3), goal_column=None)  # 11, 14, then 13
    assert chosen[0].tolist() == [3] and chosen[1].tolist() == [1, 2]
    # goal-state mode ranks by the shift toward the goal state (column 1), largest first
    shifts = {0: np.array([[0, 0.1], [0, 0.3], [0, -0.2], [0, 0.0]]), 1: np.array([[0, 0.2], [0, 0.0], [0, 0.1]])}
    with_states = {job: FirstStage(f.cosine, shifts[job], f.confirmed) for job, f in first.items()}
    chosen = choose_candidates(with_states, labels, TwoStageScreen(1, 1), goal_column=1)  # 11 (0.3): exact already
    assert chosen[0].tolist() == [] and chosen[1].tolist() == []
    chosen = choose_candidates(with_states, labels, TwoStageScreen(1, 2), goal_column=1)  # + 10 (0.1), 14 (0.1)
    assert chosen[0].tolist() == [0] and chosen[1].tolist() == []


def test_confirming_everything_is_the_exact_screen(setup):
    adata, model, vocab = setup
    exact = screen(adata, model, vocab, gene_shifts=True)
    result = screen(adata, model, vocab, gene_shifts=True, screen="two_stage", n_confirm=10_000)
    assert result["cells"]["confirmed"].all()
    assert_same_table(result["cells"].drop(columns="confirmed"), exact["cells"])


def assert_same_table(table: pd.DataFrame, expected: pd.DataFrame) -> None:
    """The same rows and labels; values equal up to float rounding (the screens batch their passes differently)."""
    assert list(table) == list(expected) and len(table) == len(expected)
    for column in expected:
        if pd.api.types.is_float_dtype(expected[column]):
            np.testing.assert_allclose(table[column], expected[column], rtol=0, atol=5e-7, err_msg=column)
        else:
            assert table[column].astype(str).tolist() == expected[column].astype(str).tolist(), column


def test_estimates_are_deterministic_and_close_for_a_tiny_model(setup):
    adata, model, vocab = setup
    estimate_only = {"screen": "two_stage", "n_confirm": 0, "n_confirm_genes": 0, "pooling": "mean"}
    first = cell_rows(screen(adata, model, vocab, **estimate_only))
    second = cell_rows(screen(adata, model, vocab, **estimate_only))
    # with n_confirm=0 only the anchors ran exactly (16 per cell, evenly spaced, the first gene included)
    per_cell = first.groupby("cell", observed=True)
    genes = per_cell.size()
    np.testing.assert_array_equal(per_cell["confirmed"].sum(), np.minimum(genes, 16))
    assert per_cell["confirmed"].first().all()
    np.testing.assert_array_equal(first["cosine"].to_numpy(), second["cosine"].to_numpy())
    exact = cell_rows(screen(adata, model, vocab, pooling="mean"))
    shift, estimate = 1 - exact["cosine"].to_numpy(np.float64), 1 - first["cosine"].to_numpy(np.float64)
    assert np.corrcoef(shift, estimate)[0, 1] > 0.9


def naive_estimate(original, anchors, anchor_hidden, i, special, pooling, influence=None):
    """The estimated pooled embedding of deleting position ``i``, built row by row (the module's rule)."""
    n = original.shape[0]
    first, end = (1, n - 1) if special else (0, n)
    bounds = [*anchors.tolist(), end]
    hidden = [*anchor_hidden, original[: n - 1]]
    k = max(j for j in range(len(anchors)) if anchors[j] <= i)
    a, b = bounds[k], bounds[k + 1]
    left, right = hidden[k], hidden[k + 1]
    w = (i - a) / (b - a) if influence is None else float(influence[a:i].sum() / influence[a:b].sum())
    rows = []
    for p in range(n - 1):
        if a <= p < i:
            rows.append(right[p])
        elif i <= p < b:
            rows.append(left[p])
        else:
            rows.append((1 - w) * left[p] + w * right[p])
    rows = torch.stack(rows)
    if pooling == "cls":
        return rows[0]
    return rows[first : end - 1].mean(0)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("special", [False, True])
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_prefix_sums_equal_the_row_by_row_estimate(special, pooling, weighted):
    if pooling == "cls" and not special:
        pytest.skip("<cls> pooling needs the special tokens")
    generator = torch.Generator().manual_seed(0)
    n, d = 17, 5
    original = torch.randn(n, d, generator=generator, dtype=torch.float64)
    first, end = (1, n - 1) if special else (0, n)
    anchors = anchor_positions(first, end, 3)
    assert anchors[0] == first and len(anchors) == 3
    anchor_hidden = [torch.randn(n - 1, d, generator=generator, dtype=torch.float64) for _ in anchors]
    deleted = np.arange(first, end)
    states = torch.randn(2, d, generator=generator)
    engine = EngineSpec(1, pooling, "pooled", states, gene_shifts=False, token_budget=1000)
    influence = torch.rand(n, generator=generator, dtype=torch.float64) if weighted else None
    cosine, shifts = estimate_deletions(original, anchors, anchor_hidden, deleted, engine, special, influence)
    pooled = original[0] if pooling == "cls" else original[first:end].mean(0)
    cos = torch.nn.functional.cosine_similarity
    for row, i in enumerate(deleted):
        estimate = naive_estimate(original, anchors, anchor_hidden, int(i), special, pooling, influence)
        assert cosine[row] == pytest.approx(float(cos(estimate, pooled, dim=0)), abs=1e-12)
        expected = cos(estimate[None], states.double(), dim=-1) - cos(pooled[None], states.double(), dim=-1)
        np.testing.assert_allclose(shifts[row], expected.numpy(), atol=1e-12)
    # anchors are exact deletions: their estimate is the anchor's own pooled embedding
    a = 1
    exact_pooled = anchor_hidden[a][0] if pooling == "cls" else anchor_hidden[a][first : end - 1].mean(0)
    assert cosine[anchors[a] - first] == pytest.approx(float(cos(exact_pooled, pooled, dim=0)), abs=1e-12)


def test_a_two_stage_store_resumes_to_the_uninterrupted_results(setup, tmp_path, monkeypatch):
    adata, model, vocab = setup
    monkeypatch.setattr(_planning, "CHUNK_TOKENS", 1500)  # several parts
    options = {"screen": "two_stage", "n_confirm": 3, "n_confirm_genes": 2, "gene_shifts": True}
    uninterrupted = screen(adata, model, vocab, **options)
    run_part, calls = _two_stage.ConfirmRunner.run, []

    def failing(*args, **kwargs):  # the run dies in stage 2, after its first part
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return run_part(*args, **kwargs)

    monkeypatch.setattr(_two_stage.ConfirmRunner, "run", failing)
    with pytest.raises(KeyboardInterrupt):
        screen(adata, model, vocab, out=tmp_path / "store", **options)
    assert len(list((tmp_path / "store" / "parts").glob("part-*.parquet"))) == 1
    monkeypatch.setattr(_two_stage.ConfirmRunner, "run", run_part)
    with pytest.raises(ValueError, match="n_confirm"):  # another screen is another run
        screen(adata, model, vocab, out=tmp_path / "store", **(options | {"n_confirm": 4}))
    resumed = screen(adata, model, vocab, out=tmp_path / "store", **options)
    stored = sgf.tl.read_perturbation_store(resumed["path"])["cells"]
    expected = uninterrupted["cells"]
    assert len(stored) == len(expected)
    for column in expected:
        if isinstance(expected[column].dtype, pd.CategoricalDtype):
            assert stored[column].astype(str).tolist() == expected[column].astype(str).tolist(), column
        else:
            np.testing.assert_array_equal(stored[column].to_numpy(), expected[column].to_numpy(), err_msg=column)
    # the same summary; near-ties of float32 means may order differently (store: float64 sums), so by gene
    summary = resumed["genes"].set_index("perturbed")
    expected_summary = uninterrupted["genes"].set_index("perturbed").loc[summary.index]
    assert len(summary) == len(uninterrupted["genes"])
    np.testing.assert_array_equal(summary["n_confirmed"], expected_summary["n_confirmed"])
    np.testing.assert_allclose(summary["cosine_mean"], expected_summary["cosine_mean"], rtol=0, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Writing zarr v2 data:UserWarning")  # anndata's notice about its next default
def test_two_stage_results_survive_files_and_feed_stats_and_plots(setup, tmp_path):
    adata, model, vocab = setup
    states = {"state_key": "state", "start_state": "a", "goal_state": "b"}
    sgf.tl.perturb(
        adata, model, "all", vocabulary=vocab, execution=QUIET, states=states, screen="two_stage", n_confirm=3
    )
    adata.write_h5ad(tmp_path / "a.h5ad")
    adata.write_zarr(tmp_path / "a.zarr")
    import matplotlib

    matplotlib.use("Agg")
    for back in (ad.read_h5ad(tmp_path / "a.h5ad"), ad.read_zarr(tmp_path / "a.zarr")):
        table = back.uns["geneformer_perturb"]["cells"]
        assert table["confirmed"].dtype == bool
        stats = sgf.tl.perturbation_stats(back, "goal_state_shift", inplace=False)
        assert "n_confirmed" in stats
        sgf.pl.perturbation_shifts(back, show=False)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"screen": "fast"}, "screen must be"),
        ({"screen": "two_stage", "perturbation": "mask"}, "single-gene deletions"),
        ({"screen": "two_stage", "perturbation": "overexpress", "reference_quirks": True}, "reference_quirks"),
        ({"screen": "two_stage", "anchor_gene": "GENE3"}, "anchor"),
        ({"screen": "two_stage", "n_confirm": -1}, "n_confirm"),
    ],
)
def test_two_stage_refuses_what_it_cannot_estimate(setup, kwargs, match):
    adata, model, vocab = setup
    with pytest.raises(ValueError, match=match):
        screen(adata, model, vocab, **kwargs)
    with pytest.raises(ValueError, match="single-gene deletions"):
        sgf.tl.perturb(adata, model, ["GENE3"], vocabulary=vocab, screen="two_stage")


def test_plots_mark_genes_whose_mean_includes_estimates(setup):
    adata, model, vocab = setup
    sgf.tl.perturb(adata, model, "all", vocabulary=vocab, execution=QUIET, screen="two_stage", n_confirm=2,
                   n_confirm_genes=1, max_cells=4)  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    ax = sgf.pl.perturbation_shifts(adata, show=False, n_genes=40)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert any("≈" in label for label in labels) and any("≈" not in label for label in labels)
    assert "≈ includes stage-1 estimates" in ax.get_title()
    stats = sgf.tl.perturbation_stats(adata, "mixture_model", inplace=False)
    summary = adata.uns["geneformer_perturb"]["genes"]
    expected = dict(zip(summary["perturbed_token"].astype(str), summary["n_confirmed"], strict=True))
    assert stats["n_confirmed"].tolist() == [expected[t] for t in stats["perturbed_token"].astype(str)]


GOAL = {"state_key": "state", "start_state": "a", "goal_state": "b"}


def listed_genes(adata, n=30):
    """``n`` genes of the data, and one of the vocabulary the data lacks (overexpression inserts it)."""
    return [*adata.var_names[:n].tolist(), fake_gene_id(N_FAKE_GENES)]


@pytest.mark.parametrize(
    "options",
    [
        {"perturbation": "overexpress"},
        {"perturbation": "overexpress", "cell_cosine": "gene_mean"},
        {"perturbation": "overexpress", "states": GOAL},
        {"genes": "listed", "combine": "separately"},
        {"genes": "listed", "combine": "separately", "perturbation": "overexpress", "states": GOAL},
    ],
)
def test_overexpression_and_gene_list_screens_confirm_the_exact_values(setup, options):
    adata, model, vocab = setup
    options = dict(options)
    genes = listed_genes(adata) if options.pop("genes", "all") == "listed" else "all"
    base = {"vocabulary": vocab, "inplace": False, "execution": QUIET, "max_cells": 6} | options
    exact = sgf.tl.perturb(adata, model, genes, **base)
    result = sgf.tl.perturb(adata, model, genes, screen="two_stage", n_confirm=3, n_confirm_genes=2, **base)
    got, expected = cell_rows(result), cell_rows(exact)
    for column in ("cell", "perturbed", "perturbed_token"):
        assert got[column].astype(str).tolist() == expected[column].astype(str).tolist()
    confirmed = got["confirmed"].to_numpy()
    assert 0 < confirmed.sum() < len(confirmed)
    for column in ["cosine", *[c for c in got if c.startswith("shift_")]]:
        np.testing.assert_allclose(got.loc[confirmed, column], expected.loc[confirmed, column], rtol=0, atol=3e-7)
    assert np.isfinite(got["cosine"]).all()
    if genes != "all" and options.get("perturbation") == "overexpress":
        # a gene no cell holds is inserted: stage 1 cannot estimate it, so it runs exactly in every cell
        inserted = got["perturbed_token"].astype(str) == str(vocab.token_dictionary[genes[-1]])
        assert inserted.sum() == got["cell"].nunique() and confirmed[inserted.to_numpy()].all()
    everything = sgf.tl.perturb(adata, model, genes, screen="two_stage", n_confirm=10_000, **base)
    assert everything["cells"]["confirmed"].all()
    assert_same_table(everything["cells"].drop(columns="confirmed"), exact["cells"])


def test_overexpression_estimates_follow_the_exact_values(setup):
    adata, model, vocab = setup
    options = {"perturbation": "overexpress", "pooling": "mean"}
    estimates = cell_rows(screen(adata, model, vocab, screen="two_stage", n_confirm=0, n_confirm_genes=0, **options))
    again = cell_rows(screen(adata, model, vocab, screen="two_stage", n_confirm=0, n_confirm_genes=0, **options))
    np.testing.assert_array_equal(estimates["cosine"].to_numpy(), again["cosine"].to_numpy())
    exact = cell_rows(screen(adata, model, vocab, **options))
    shift, estimate = 1 - exact["cosine"].to_numpy(np.float64), 1 - estimates["cosine"].to_numpy(np.float64)
    assert np.corrcoef(shift, estimate)[0, 1] > 0.8


def naive_overexpression(original, anchors, anchor_hidden, i, special, pooling, gene_mean=False, influence=None):
    """The estimated pooled embedding (or mean gene cosine) of moving position ``i`` to the top, row by row."""
    n = original.shape[0]
    first, end = (1, n - 1) if special else (0, n)
    bounds = [first, *anchors.tolist()]
    hidden = [original, *anchor_hidden]
    k = max(j for j in range(len(bounds) - 1) if bounds[j] < i)
    a, b = bounds[k], bounds[k + 1]
    left, right = hidden[k], hidden[k + 1]
    w = (
        (i - a) / (b - a)
        if influence is None
        else float(influence[a + 1 : i + 1].sum() / influence[a + 1 : b + 1].sum())
    )
    rows = []
    for p in range(n):
        if p == first:  # the moved gene: its own row plus the anchors' mean change at the top
            lift = torch.stack([h[first] - original[int(c)] for h, c in zip(anchor_hidden, anchors, strict=True)])
            rows.append(original[i] + lift.mean(0))
        elif a < p <= i:
            rows.append(right[p])
        elif i < p <= b:
            rows.append(left[p])
        else:
            rows.append((1 - w) * left[p] + w * right[p])
    rows = torch.stack(rows)
    if gene_mean:  # each gene's cosine to its original row (mixed like the rows); the moved gene is not compared
        cos = torch.nn.functional.cosine_similarity
        cosines = []
        for p in range(first + 1, end):
            source = p - 1 if p <= i else p
            if a < p <= b:
                cosines.append(cos(rows[p], original[source], dim=0))
            else:
                left_cos = cos(left[p], original[p - 1 if p <= a else p], dim=0)
                right_cos = cos(right[p], original[p - 1 if p <= b else p], dim=0)
                cosines.append((1 - w) * left_cos + w * right_cos)
        return torch.stack(cosines).mean()
    return rows[0] if pooling == "cls" else rows[first:end].mean(0)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("special", [False, True])
@pytest.mark.parametrize("mode", ["mean", "cls", "gene_mean"])
def test_overexpression_prefix_sums_equal_the_row_by_row_estimate(special, mode, weighted):
    generator = torch.Generator().manual_seed(1)
    n, d = 17, 5
    original = torch.randn(n, d, generator=generator, dtype=torch.float64)
    first, end = (1, n - 1) if special else (0, n)
    anchors = overexpression_anchors(first, end, 3)
    assert anchors[-1] == end - 1 and len(anchors) == 3 and anchors[0] > first
    anchor_hidden = [torch.randn(n, d, generator=generator, dtype=torch.float64) for _ in anchors]
    moved = np.arange(first + 1, end)
    states = torch.randn(2, d, generator=generator)
    pooling = "cls" if mode == "cls" else "mean"
    engine = EngineSpec(1, pooling, "gene_mean" if mode == "gene_mean" else "pooled", states, False, 1000)
    influence = torch.rand(n, generator=generator, dtype=torch.float64) if weighted else None
    cosine, shifts = estimate_overexpressions(original, anchors, anchor_hidden, moved, engine, special, influence)
    pooled = original[0] if pooling == "cls" else original[first:end].mean(0)
    cos = torch.nn.functional.cosine_similarity
    naive = {"original": original, "anchors": anchors, "anchor_hidden": anchor_hidden, "influence": influence}
    for row, i in enumerate(moved):
        if mode == "gene_mean":
            expected_cos = float(
                naive_overexpression(i=int(i), special=special, pooling=pooling, gene_mean=True, **naive)
            )
        estimate = naive_overexpression(i=int(i), special=special, pooling=pooling, **naive)
        if mode != "gene_mean":
            expected_cos = float(cos(estimate, pooled, dim=0))
        assert cosine[row] == pytest.approx(expected_cos, abs=1e-12)
        expected = cos(estimate[None], states.double(), dim=-1) - cos(pooled[None], states.double(), dim=-1)
        np.testing.assert_allclose(shifts[row], expected.numpy(), atol=1e-12)
    # an anchor's estimate is its exact move, but for the moved gene's own row (the anchors' mean change at the top)
    if mode == "cls" and special:
        exact = anchor_hidden[1][0]
        assert cosine[anchors[1] - first - 1] == pytest.approx(float(cos(exact, pooled, dim=0)), abs=1e-12)


def test_rounds_find_each_cells_strongest_deletions():
    # V1: the tiny random V2 model's deletion shifts sit at float32 rounding, where no ranking is meaningful
    vocab = make_vocabulary("V1")
    adata, model = encoded_counts(vocab, n_obs=12, seed=5), tiny_model(vocab, layers=3)
    exact = cell_rows(screen(adata, model, vocab))
    result = screen(adata, model, vocab, screen="two_stage", n_confirm=10, n_confirm_genes=0)
    got = cell_rows(result)
    for cell, rows in exact.groupby("cell", observed=True):
        mine = got[got["cell"] == cell]
        assert mine["confirmed"].sum() == 16 + 10  # the anchors, then 10 more chosen in rounds
        strongest = set(rows.nsmallest(5, "cosine")["perturbed_token"].astype(str))
        confirmed = mine[mine["confirmed"]]
        assert strongest == set(confirmed.nsmallest(5, "cosine")["perturbed_token"].astype(str)), cell
    # the rounds are recorded with the screen's settings
    assert result["params"]["screen"]["round"] == {"bisect": 3, "confirm": 3}
    assert result["params"]["screen"]["n_anchors"] == 16


def test_n_confirm_as_a_share_of_each_cells_genes(setup):
    adata, model, vocab = setup
    assert TwoStageScreen(0.1).confirmations(85) == 9 and TwoStageScreen(7).confirmations(85) == 7
    for bad in (1.5, 0.0, -1):
        with pytest.raises(ValueError, match="n_confirm"):
            TwoStageScreen(bad)
    got = cell_rows(screen(adata, model, vocab, screen="two_stage", n_confirm=0.1, n_confirm_genes=0))
    per_cell = got.groupby("cell", observed=True)
    expected = np.minimum(per_cell.size(), 16 + np.ceil(0.1 * per_cell.size()))
    np.testing.assert_array_equal(per_cell["confirmed"].sum(), expected)
