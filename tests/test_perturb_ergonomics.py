"""Perturbation ergonomics of issue 22: goal states that round-trip through h5ad, boolean significance."""

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
        assert not np.issubdtype(np.asarray(stored["alt_states"]).dtype, np.floating)
        assert sgf.tl.GoalStates.from_params(stored) == states
