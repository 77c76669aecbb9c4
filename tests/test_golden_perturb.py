"""In silico perturbation and its statistics against the reference's outputs (``../shared/golden/perturb``).

Every run of the golden folder is repeated with ``sgf.tl.perturb`` on the same cells and tiny checkpoint, and every
raw value is compared (cosines and shifts within 1e-5). The statistics are computed from the reference's own raw
values and compared with its CSVs: same genes in the same order, means within 1e-9, p-values and FDRs within 1e-8
relative, identical impact calls, counts and significance.
"""

from __future__ import annotations

import gzip
import json
from functools import cache

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from helpers import DICTIONARIES, encode_golden_input, shared_path

import scgeneformer as sgf

RUNS = [
    "a_V1_delete_all_cell_3cells",
    "a2_V1_delete_all_cell_and_gene_smallcell",
    "c_V1_delete_TMSB4X_B2M_cell_and_gene_20cells",
    "d_V1_overexpress_STAT3_cell_and_gene_20cells",
    "d2b_V1_overexpress_STAT3_cell_D_boundary_no2047",
    "e_V1_goal_state_delete_all_cell_3cells",
    "f_V2_delete_all_cls_3cells",
    "f2_V2_delete_all_cls_and_gene_smallcell",
    "f3_V2_overexpress_all_cls_2cells",
    "f4_V2_delete_TMSB4X_B2M_cls_and_gene_20cells",
    "f5_V2_goal_state_delete_all_cls_3cells",
    "g_V1_delete_anchor_B2M_combos_cell_2cells",
]


def params_of(run: str) -> dict:
    return json.loads(shared_path("golden", "perturb", run, "params.json").read_text())


def raw_of(run: str) -> dict:
    folder = shared_path("golden", "perturb", run)
    path = folder / "raw.json.gz"
    text = gzip.decompress(path.read_bytes()) if path.exists() else (folder / "raw.json").read_bytes()
    return json.loads(text)


def merged_raw(run: str, states: list | None) -> dict:
    """The reference's pickles merged in order: ``{(state or None, "perturbed|affected"): [values]}``."""
    merged: dict = {}
    for content in raw_of(run).values():
        parts = content.items() if states else [(None, content)]
        for state, entries in parts:
            for key, values in entries.items():
                merged.setdefault((state, key), []).extend(values if isinstance(values, list) else [values])
    return merged


@cache
def encoded(dataset: str, version: str) -> ad.AnnData:
    adata = encode_golden_input(dataset, version, reference_quirks=True)
    if dataset == "A":
        adata.obs["cell_label"] = adata.obs["cell_type"]
    return adata


def golden_states(params: dict) -> dict:
    states = params["isp_kwargs"].get("cell_states_to_model")
    if not states:
        return {}
    embeddings = json.loads(shared_path("golden", "perturb", params["state_embs"]).read_text())["state_embs"]
    return {
        "states": {k: states[k] for k in ("state_key", "start_state", "goal_state", "alt_states")},
        "state_embeddings": embeddings,
    }


@pytest.mark.parametrize("run", RUNS)
def test_perturbation_matches_reference(run):
    params = params_of(run)
    options = params["isp_kwargs"]
    version = options["model_version"]
    adata = encoded(params["input_dataset"].split()[1][0], version)
    model = sgf.GeneformerModel.from_pretrained(shared_path("golden", "checkpoints", f"tiny_{version.lower()}"))
    states = golden_states(params)
    cell_ids = [cell["cell_id"] for cell in params["perturbed_cells"]]
    # the same cells, with the same tokens, in the same order as the reference
    ids = sgf.pp.input_ids(adata, adata.obs_names.get_indexer(cell_ids))
    for cell, sequence in zip(params["perturbed_cells"], ids, strict=True):
        np.testing.assert_array_equal(sequence, cell["input_ids"])
    if "max_ncells" in options:
        cells, max_cells = None, options["max_ncells"]
    else:
        cells, max_cells = cell_ids, None
    genes = options["genes_to_perturb"]
    results = sgf.tl.perturb(
        adata,
        model,
        genes,
        perturbation=options["perturb_type"],
        layer=options["emb_layer"],
        cells=cells,
        max_cells=max_cells,
        cell_cosine="gene_mean",
        gene_shifts="gene" in options["emb_mode"],
        anchor_gene=options.get("anchor_gene"),
        vocabulary=shared_path("data", "dictionaries", DICTIONARIES[version]),
        reference_quirks=True,
        inplace=False,
        **states,
    )
    table = results["cells"]
    assert list(pd.unique(table["cell"].astype(str))) == cell_ids
    if options.get("anchor_gene"):
        # the reference keeps only the anchor+gene pairs, under the test gene's token; we add each part alone
        table = table[table["combination"] == "anchor+gene"]
        table = table.assign(perturbed_token=table["perturbed_token"].astype(str).str.split(",").str[1])

    state_names = sgf.tl.GoalStates.coerce(states["states"]).names if states else [None]
    ours: dict = {}
    for state in state_names:
        column = "cosine" if state is None else f"shift_{state}"
        rows = table if state is None else table[table["affected"] == "cell"]
        affected = np.where(rows["affected_token"] < 0, "cell_emb", rows["affected_token"].astype(str))
        keys = rows["perturbed_token"].astype(str).to_numpy() + "|" + affected
        for key, value in zip(keys, rows[column].to_numpy(), strict=True):
            ours.setdefault((state, key), []).append(value)
    reference = merged_raw(run, state_names if states else None)
    assert ours.keys() == reference.keys()
    worst = max(np.abs(np.asarray(ours[k]) - np.asarray(reference[k])).max() for k in reference)
    assert worst <= 1e-5


# -- statistics on the reference's raw values ------------------------------------------------------------------
def results_from_raw(run: str) -> dict:
    """A perturbation-results dict holding the reference's raw values, as sgf.tl.perturb would return it."""
    params = params_of(run)
    options = params["isp_kwargs"]
    vocab = sgf.get_vocabulary(shared_path("data", "dictionaries", DICTIONARIES[options["model_version"]]))
    states = options.get("cell_states_to_model")
    state_names = [states["start_state"], states["goal_state"], *states["alt_states"]] if states else []
    merged = merged_raw(run, state_names)
    columns: dict[str, list] = {"perturbed_token": [], "affected_token": []}
    for name in state_names or ["cosine"]:
        columns["cosine" if not states else f"shift_{name}"] = []
    first_state = state_names[0] if states else None
    for (state, key), values in merged.items():
        if state != first_state:
            continue
        perturbed, affected = key.split("|")
        columns["perturbed_token"] += [perturbed] * len(values)
        columns["affected_token"] += [-1 if affected == "cell_emb" else int(affected)] * len(values)
        for name in state_names:
            columns[f"shift_{name}"] += merged[(name, key)]
        if not states:
            columns["cosine"] += values
    table = pd.DataFrame(columns)
    if states:
        table["cosine"] = np.nan
    tokens = [tuple(int(t) for t in p.split(",")) for p in table["perturbed_token"]]
    table["perturbed"] = ["+".join(vocab.id_to_symbol[t] for t in tok) for tok in tokens]
    table["perturbed_id"] = ["+".join(vocab.id_to_gene[t] for t in tok) for tok in tokens]
    table["cell"] = "unknown"
    affected = table["affected_token"].to_numpy()
    table["affected"] = np.where(affected < 0, "cell", vocab.id_to_symbol[np.maximum(affected, 0)].astype(str))
    table["affected_id"] = np.where(affected < 0, "", vocab.id_to_gene[np.maximum(affected, 0)].astype(str))
    genes = options["genes_to_perturb"]
    run_params = {"genes": "all" if genes == "all" else genes}
    if states:
        run_params["states"] = {k: states[k] for k in ("state_key", "start_state", "goal_state", "alt_states")}
    return {"cells": table, "params": run_params}


def golden_csv(run: str, mode: str) -> pd.DataFrame:
    folder = shared_path("golden", "perturb", run)
    path = folder / f"stats_{mode}.csv"
    return pd.read_csv(path if path.exists() else folder / f"stats_{mode}.csv.gz", index_col=0)


def assert_close(ours, theirs, rtol=1e-8, atol=0.0):
    np.testing.assert_allclose(np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float), rtol=rtol, atol=atol)


def stats_cases():
    return [
        ("a_V1_delete_all_cell_3cells", "mixture_model"),
        ("a2_V1_delete_all_cell_and_gene_smallcell", "mixture_model"),
        ("a2_V1_delete_all_cell_and_gene_smallcell", "aggregate_gene_shifts"),
        ("c_V1_delete_TMSB4X_B2M_cell_and_gene_20cells", "aggregate_gene_shifts"),
        ("d_V1_overexpress_STAT3_cell_and_gene_20cells", "aggregate_data"),
        ("d_V1_overexpress_STAT3_cell_and_gene_20cells", "aggregate_gene_shifts"),
        ("d2b_V1_overexpress_STAT3_cell_D_boundary_no2047", "aggregate_data"),
        ("e_V1_goal_state_delete_all_cell_3cells", "goal_state_shift"),
        ("f_V2_delete_all_cls_3cells", "mixture_model"),
        ("f2_V2_delete_all_cls_and_gene_smallcell", "aggregate_gene_shifts"),
        ("f3_V2_overexpress_all_cls_2cells", "mixture_model"),
        ("f4_V2_delete_TMSB4X_B2M_cls_and_gene_20cells", "aggregate_gene_shifts"),
        ("f5_V2_goal_state_delete_all_cls_3cells", "goal_state_shift"),
    ]


@pytest.mark.parametrize(("run", "mode"), stats_cases())
def test_statistics_match_reference(run, mode):
    reference = golden_csv(run, mode)
    results = results_from_raw(run)
    ours = sgf.tl.perturbation_stats(results, mode, reference_quirks=True)
    assert len(ours) == len(reference)
    if mode == "mixture_model":
        assert list(ours["perturbed_token"].astype(int)) == list(reference["Gene"])
        assert_close(ours["cosine_mean"], reference["Test_avg_shift"], rtol=0, atol=1e-12)
        assert list(ours["impact"]) == list(reference["Impact_component"])
        assert_close(ours["impact_percent"], reference["Impact_component_percent"])
        assert list(ours["n_detections"]) == list(reference["N_Detections"])
    elif mode == "goal_state_shift":
        assert list(ours["perturbed_token"].astype(int)) == list(reference["Gene"])
        assert_close(ours["shift_to_goal"], reference["Shift_to_goal_end"], rtol=0, atol=1e-12)
        assert_close(ours["shift_to_DC"], reference["Shift_to_alt_end_DC"], rtol=0, atol=1e-12)
        for ours_column, theirs in (
            ("pval_goal", "Goal_end_vs_random_pval"),
            ("pval_DC", "Alt_end_vs_random_pval_DC"),
            ("fdr_goal", "Goal_end_FDR"),
            ("fdr_DC", "Alt_end_FDR_DC"),
        ):
            assert_close(ours[ours_column], reference[theirs])
        assert list(ours["n_detections"]) == list(reference["N_Detections"])
        assert list(ours["significant"]) == list(reference["Sig"])
    elif mode == "aggregate_data":
        assert_close(ours["cosine"], reference["Cosine_sim"], rtol=0, atol=1e-15)
        assert list(ours["perturbed"]) == list(reference["Gene"])
    else:
        affected = np.where(ours["affected_token"] < 0, "cell_emb", ours["affected_token"].astype(str))
        theirs_affected = reference["Affected"].astype(str).to_numpy()
        assert list(affected) == list(theirs_affected)
        assert_close(ours["cosine_mean"], reference["Cosine_sim_mean"], rtol=0, atol=1e-12)
        assert_close(ours["cosine_std"], reference["Cosine_sim_stdev"], rtol=0, atol=1e-12)
        assert list(ours["n_detections"]) == list(reference["N_Detections"])
