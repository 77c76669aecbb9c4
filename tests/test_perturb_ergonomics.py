"""Perturbation ergonomics of issue 22: goal states read back after h5ad, boolean significance."""

import anndata as ad
import numpy as np

import scgeneformer as sgf


def test_goal_states_alt_states_round_trip_h5ad(tmp_path):
    for alt in ((), ("hcm",), ("hcm", "x")):
        states = sgf.tl.GoalStates("disease", start_state="dcm", goal_state="nf", alt_states=alt)
        adata = ad.AnnData(np.zeros((2, 2), dtype=np.float32))
        adata.uns["states"] = states.to_params()
        adata.write_h5ad(tmp_path / "a.h5ad")
        stored = ad.read_h5ad(tmp_path / "a.h5ad").uns["states"]
        assert sgf.tl.GoalStates.from_params(stored) == states


def test_significant_is_boolean():
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = [(str(t), v) for t in range(5, 12) for v in rng.normal(0.9 - 0.01 * t, 0.01, 6)]
    nulls = [(str(t), v) for t in range(5, 11) for v in rng.normal(0.9, 0.01, 8)]

    def table(pairs):
        cells = pd.DataFrame(
            {
                "cell": "c",
                "perturbed_token": [p for p, _ in pairs],
                "perturbed": [f"G{p}" for p, _ in pairs],
                "perturbed_id": [f"E{p}" for p, _ in pairs],
                "affected": "cell",
                "affected_id": "",
                "affected_token": -1,
                "cosine": np.array([v for _, v in pairs], dtype=np.float32),
            }
        )
        return {"cells": cells, "params": {"genes": "all"}}

    out = sgf.tl.perturbation_stats(table(rows), "vs_null", null=table(nulls))
    assert out["significant"].dtype == bool and out["significant"].any()
