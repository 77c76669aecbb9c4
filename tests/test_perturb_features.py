"""Mask deletion, anchor-gene combinations, genes perturbed separately and ``min_cells`` (issues 21 and 22)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import encoded_counts, make_vocabulary, tiny_model

import scgeneformer as sgf
from scgeneformer.tl._perturb import _edits as ops


@pytest.fixture(scope="module", params=["V1", "V2"])
def setup(request):
    vocab = make_vocabulary(request.param)
    adata = encoded_counts(vocab, n_obs=8, n_vars=40, seed=3)
    adata.obs["state"] = pd.Categorical(np.array(["a", "b"])[np.arange(adata.n_obs) % 2])
    return adata, tiny_model(vocab), vocab


def perturb(adata, model, vocab, genes="all", **kwargs):
    return sgf.tl.perturb(adata, model, genes, vocabulary=vocab, inplace=False, **kwargs)


def hidden_of(model, ids):
    with torch.inference_mode():
        return model.module.encode(torch.as_tensor(ids[None], dtype=torch.long), None, model.hidden_state_index(-1))[0]


def cell_ids(adata, cell):
    return sgf.pp.input_ids(adata, [adata.obs_names.get_loc(cell)])[0].astype(np.int64)


def cos(a, b):
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


# -- mask deletion -----------------------------------------------------------------------------------------------
def test_mask_keeps_every_position():
    ids = np.array([2, 10, 11, 12, 13, 3])  # V2: <cls> genes <eos>
    perturbed, sources = ops.mask(ids, [2], 1, special=True)
    np.testing.assert_array_equal(perturbed, [2, 10, 1, 12, 13, 3])  # same length, <mask> at the gene's position
    np.testing.assert_array_equal(sources, [-1, 1, -1, 3, 4, -1])  # the others compared position to position
    perturbed, sources = ops.mask(np.array([10, 11, 12]), [0, 2], 1, special=False)
    np.testing.assert_array_equal(perturbed, [1, 11, 1])
    np.testing.assert_array_equal(sources, [-1, 1, -1])


def test_mask_run_matches_a_forward_pass_by_hand_and_differs_from_deletion(setup):
    adata, model, vocab = setup
    cell = adata.obs_names[0]
    special = vocab.has_special_tokens
    kwargs = {"cells": [cell], "gene_shifts": True}
    if not special:
        kwargs |= {"pooling": "mean", "cell_cosine": "gene_mean"}
    masked = perturb(adata, model, vocab, perturbation="mask", **kwargs)
    assert masked["params"]["perturbation"] == "mask"
    deleted = perturb(adata, model, vocab, perturbation="delete", **kwargs)
    ids = cell_ids(adata, cell)
    original = hidden_of(model, ids)
    position = 2 if special else 1
    mask_id = vocab.token_dictionary["<mask>"]
    perturbed_ids = ids.copy()
    perturbed_ids[position] = mask_id
    perturbed = hidden_of(model, perturbed_ids)
    genes = np.arange(1, len(ids) - 1) if special else np.arange(len(ids))
    others = genes[genes != position]
    gene_cos = cos(perturbed[others], original[others]).numpy()
    expected = cos(perturbed[0], original[0]).item() if special else gene_cos.mean()

    table = masked["cells"]
    rows = table[table["perturbed_token"] == str(ids[position])]
    cell_row = rows[rows["affected"] == "cell"]
    np.testing.assert_allclose(cell_row["cosine"], expected, atol=1e-6)
    gene_rows = rows[rows["affected"] != "cell"]
    # every other gene is compared with itself at the same position
    np.testing.assert_array_equal(gene_rows["affected_token"], ids[others])
    np.testing.assert_allclose(gene_rows["cosine"], gene_cos, atol=1e-6)
    # one perturbation per gene, as deletion; values differ from deletion's (whose positions shift)
    cells_m = table[table["affected"] == "cell"].set_index("perturbed_token")["cosine"]
    del_table = deleted["cells"]
    cells_d = del_table[del_table["affected"] == "cell"].set_index("perturbed_token")["cosine"]
    assert sorted(cells_m.index) == sorted(cells_d.index)
    assert not np.allclose(cells_m.sort_index(), cells_d.sort_index(), rtol=0, atol=1e-7)


def test_mask_with_gene_lists_anchor_goal_states_and_a_store(setup, tmp_path):
    adata, model, vocab = setup
    ids = cell_ids(adata, adata.obs_names[0])
    genes = list(vocab.id_to_gene[ids[-3:-1]])
    listed = perturb(adata, model, vocab, genes, perturbation="mask", cells=adata.obs_names[:1])
    assert len(listed["cells"]) == 1 and listed["cells"]["perturbed"].iloc[0].count("+") == 1
    anchor = vocab.id_to_gene[ids[-2]]
    anchored = perturb(adata, model, vocab, perturbation="mask", anchor_gene=anchor, max_cells=2)
    assert set(anchored["cells"]["combination"]) == {"anchor", "gene", "anchor+gene"}
    goal = {"state_key": "state", "start_state": "a", "goal_state": "b"}
    in_memory = perturb(adata, model, vocab, perturbation="mask", states=goal, max_cells=2)
    stored = perturb(adata, model, vocab, perturbation="mask", states=goal, max_cells=2, out=tmp_path / "s")
    assert stored["params"]["perturbation"] == "mask"
    table = sgf.tl.read_perturbation_store(tmp_path / "s")["cells"]
    np.testing.assert_allclose(table["shift_b"], in_memory["cells"]["shift_b"], atol=1e-6)


# -- anchor-gene combinations ------------------------------------------------------------------------------------
def anchored_run(setup, **kwargs):
    adata, model, vocab = setup
    anchor_token = int(cell_ids(adata, adata.obs_names[0])[-2])
    results = perturb(adata, model, vocab, anchor_gene=vocab.id_to_gene[anchor_token], max_cells=4, **kwargs)
    return results, anchor_token


def test_anchor_run_holds_the_anchor_each_gene_and_each_pair(setup):
    adata, model, vocab = setup
    results, anchor = anchored_run(setup)
    rows = results["cells"]
    special = vocab.has_special_tokens
    for cell, group in rows.groupby("cell", observed=True):
        ids = cell_ids(adata, cell)
        genes = [int(t) for t in (ids[1:-1] if special else ids) if t != anchor]
        by_kind = {k: sorted(g["perturbed_token"].astype(str)) for k, g in group.groupby("combination", observed=True)}
        assert by_kind["anchor"] == [str(anchor)]
        assert by_kind["gene"] == sorted(str(t) for t in genes)
        assert by_kind["anchor+gene"] == sorted(f"{anchor},{t}" for t in genes)
    assert results["params"]["n_perturbations"] == len(rows)
    # the pair's cosine is that of deleting both genes by hand
    cell = rows["cell"].iloc[0]
    ids = cell_ids(adata, cell)
    partner = int(ids[1])
    pair = rows[(rows["cell"] == cell) & (rows["perturbed_token"] == f"{anchor},{partner}")]
    perturbed, _ = ops.delete(ids, [1, int(np.flatnonzero(ids == anchor)[0])], special)
    original, after = hidden_of(model, ids), hidden_of(model, perturbed)
    if special:
        expected = cos(after[0], original[0]).item()
    else:
        expected = cos(after.mean(0), original.mean(0)).item()
    np.testing.assert_allclose(pair["cosine"], expected, atol=1e-6)
    assert pair["perturbed"].iloc[0] == f"{vocab.id_to_symbol[anchor]}+{vocab.id_to_symbol[partner]}"


def test_anchor_combination_statistics_by_hand(setup, tmp_path):
    results, anchor = anchored_run(setup)
    stats = sgf.tl.perturbation_stats(results, "mixture_model")
    rows = results["cells"]
    # by hand: per cell, the pair against the anchor alone and the gene alone in that cell; means over cells
    value = {(str(c), str(t)): v for c, t, v in zip(rows["cell"], rows["perturbed_token"], rows["cosine"], strict=True)}
    expected = {}
    for (cell, token), combo in value.items():
        if not token.startswith(f"{anchor},"):
            continue
        gene = token.split(",")[1]
        a, t = value[(cell, str(anchor))], value[(cell, gene)]
        expected.setdefault(gene, []).append((a, t, 1 - ((1 - a) + (1 - t)), combo, combo - (1 - ((1 - a) + (1 - t)))))
    assert sorted(stats["perturbed_token"]) == sorted(expected)
    columns = ["anchor_shift", "test_token_shift", "sum_of_indiv_shifts", "combo_shift", "combo_minus_sum_shift"]
    for _, row in stats.iterrows():
        triples = np.array(expected[row["perturbed_token"]], dtype=np.float64)
        np.testing.assert_allclose(row[columns].to_numpy(dtype=float), triples.mean(0), rtol=0, atol=1e-12)
        assert row["n_detections"] == len(triples)
    assert set(stats["impact"]) <= {0, 1}
    impact_first = stats.sort_values(["impact", "combo_minus_sum_shift"], ascending=[False, True], kind="stable")
    pd.testing.assert_frame_equal(stats, impact_first.reset_index(drop=True))
    # the same statistics from a store
    adata, model, vocab = setup
    stored, _ = anchored_run(setup, out=tmp_path / "anchor")
    from_store = sgf.tl.perturbation_stats(stored, "mixture_model")
    pd.testing.assert_frame_equal(from_store, stats, check_dtype=False, atol=1e-6)


@pytest.mark.parametrize("perturbation", ["delete", "mask", "overexpress", "inhibit"])
def test_anchor_plan_counts_match_the_jobs(setup, perturbation):
    from scgeneformer.tl._perturb._jobs import iter_jobs
    from scgeneformer.tl._perturb._spec import PerturbationSpec

    adata, _, _ = setup
    info = sgf.EncodingInfo(adata)
    cells = info.encoded_cells()
    anchor = int(info.sequences(cells[:1])[0][-2])
    cells = cells[info.cells_holding([anchor])[cells]]
    spec = PerturbationSpec(perturbation, anchor=anchor)
    counts, length = spec.perturbed_lengths(info.lengths[cells], info.has_special_tokens)
    jobs = list(iter_jobs(info, cells, spec, max_len=4096))
    assert counts.tolist() == [len(job.perturbed) for job in jobs]
    np.testing.assert_allclose(counts * length, [sum(len(p) for p in job.perturbed) for job in jobs])


# -- genes perturbed separately ----------------------------------------------------------------------------------
def list_genes(adata, vocab):
    """Three genes: two held by some cells, one (for overexpression) absent from the first cell."""
    ids = cell_ids(adata, adata.obs_names[0])
    absent = next(t for t in range(len(vocab.id_to_gene)) if t > 3 and t not in ids)
    return [vocab.id_to_gene[ids[-2]], vocab.id_to_gene[ids[len(ids) // 2]], vocab.id_to_gene[absent]]


@pytest.mark.parametrize("perturbation", ["delete", "overexpress"])
def test_separately_equals_single_gene_calls(setup, perturbation):
    adata, model, vocab = setup
    genes = list_genes(adata, vocab)
    options = {"perturbation": perturbation, "gene_shifts": True}
    together = perturb(adata, model, vocab, genes, combine="separately", **options)
    table = together["cells"]
    assert together["params"]["combine"] == "separately"
    assert together["params"]["n_perturbations"] == (table["affected"] == "cell").sum()
    for gene in genes:
        try:
            single = perturb(adata, model, vocab, [gene], **options)["cells"]
        except ValueError:  # no cell holds the gene: deletion skips it
            assert perturbation == "delete"
            continue
        token = str(single["perturbed_token"].iloc[0])
        ours = table[table["perturbed_token"] == token]
        key = ["cell", "affected_token"]
        merged = ours.astype({"cell": str}).merge(single.astype({"cell": str}), on=key, suffixes=("", "_single"))
        assert len(merged) == len(single) == len(ours)
        np.testing.assert_allclose(merged["cosine"], merged["cosine_single"], atol=1e-6)
    summary = together["genes"]
    assert set(summary["perturbed"]) == set(table["perturbed"].astype(str))
    assert not summary["perturbed"].str.contains(r"\+").any()


def test_separately_runs_each_original_once(setup, monkeypatch):
    adata, model, vocab = setup
    genes = list_genes(adata, vocab)[:2]
    encoded = []
    original_encode = model.module.encode

    def counting(ids, mask, n_run):
        encoded.append(int(ids.shape[0]))
        return original_encode(ids, mask, n_run)

    monkeypatch.setattr(model.module, "encode", counting)
    results = perturb(adata, model, vocab, genes, combine="separately")
    n_cells = results["cells"]["cell"].nunique()
    assert sum(encoded) == n_cells + len(results["cells"])  # one original per cell, one pass per (cell, gene)


def test_separately_with_goal_states_and_a_store(setup, tmp_path):
    adata, model, vocab = setup
    genes = list_genes(adata, vocab)[:2]
    goal = {"state_key": "state", "start_state": "a", "goal_state": "b"}
    in_memory = perturb(adata, model, vocab, genes, combine="separately", states=goal)
    stored = perturb(adata, model, vocab, genes, combine="separately", states=goal, out=tmp_path / "sep")
    again = perturb(adata, model, vocab, genes, combine="separately", states=goal, out=tmp_path / "sep")  # resumes
    pd.testing.assert_frame_equal(stored["genes"], again["genes"])
    table = sgf.tl.read_perturbation_store(tmp_path / "sep")["cells"]
    np.testing.assert_allclose(table["shift_b"], in_memory["cells"]["shift_b"], atol=1e-6)
    stats = sgf.tl.perturbation_stats(in_memory, "goal_state_shift")
    assert len(stats) == in_memory["cells"]["perturbed"].nunique()
    counts = in_memory["cells"]["perturbed"].astype(str).value_counts()
    kept = sgf.tl.perturbation_stats(in_memory, "goal_state_shift", min_cells=int(counts.max()))
    assert set(kept["perturbed"]) == set(counts[counts == counts.max()].index)


def test_combine_is_checked_before_any_work(setup):
    adata, model, vocab = setup
    with pytest.raises(ValueError, match="combine must be one of"):
        perturb(adata, model, vocab, list_genes(adata, vocab), combine="apart")
    with pytest.raises(ValueError, match="pass a gene list"):
        perturb(adata, model, vocab, "all", combine="separately")
    with pytest.raises(ValueError, match="min_cells must be a positive integer"):
        perturb(adata, model, vocab, min_cells=0)


# -- min_cells ---------------------------------------------------------------------------------------------------
def test_min_cells_keeps_rare_genes_from_the_top_of_the_rankings(setup):
    adata, model, vocab = setup
    results = perturb(adata, model, vocab, max_cells=4)
    everything = results["genes"]
    assert (everything["n_cells"] == 1).any() and (everything["n_cells"] > 1).any()
    filtered = perturb(adata, model, vocab, max_cells=4, min_cells=2)["genes"]
    assert filtered["n_cells"].min() >= 2
    expected = everything[everything["n_cells"] >= 2].reset_index(drop=True)
    pd.testing.assert_frame_equal(filtered, expected)
    stats = sgf.tl.perturbation_stats(results, "mixture_model")
    stats_2 = sgf.tl.perturbation_stats(results, "mixture_model", min_cells=2)
    assert stats_2["n_detections"].min() >= 2
    # computed over all genes, then filtered: the kept rows are unchanged
    pd.testing.assert_frame_equal(stats_2, stats[stats["n_detections"] >= 2].reset_index(drop=True))
    shifts = sgf.tl.perturbation_stats(results, "aggregate_gene_shifts", min_cells=3)
    assert shifts["n_detections"].min() >= 3


def test_min_cells_in_a_store_summary(setup, tmp_path):
    adata, model, vocab = setup
    in_memory = perturb(adata, model, vocab, max_cells=4, min_cells=2)
    stored = perturb(adata, model, vocab, max_cells=4, min_cells=2, out=tmp_path / "m")

    def by_gene(genes):  # near-equal means (float32 sums in a store) may swap places
        return genes.sort_values("perturbed_token").reset_index(drop=True)

    pd.testing.assert_frame_equal(by_gene(stored["genes"]), by_gene(in_memory["genes"]), check_dtype=False, atol=1e-6)
    # a summary option: changing it resumes the same store
    again = perturb(adata, model, vocab, max_cells=4, min_cells=3, out=tmp_path / "m")
    assert again["genes"]["n_cells"].min() >= 3


# -- heatmap cell counts -----------------------------------------------------------------------------------------
def test_heatmap_rows_say_how_many_cells(setup):
    import matplotlib

    matplotlib.use("Agg")
    adata, model, vocab = setup
    results = perturb(adata, model, vocab, max_cells=3, gene_shifts=True)
    ax = sgf.pl.perturbation_heatmap(results, n_perturbed=5, show=False)
    counts = results["genes"].set_index("perturbed")["n_cells"]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels
    for label in labels:
        gene, n = label.rsplit(" (n=", 1)
        assert int(n.rstrip(")")) == counts[gene]
    assert "cells" in ax.get_title()
