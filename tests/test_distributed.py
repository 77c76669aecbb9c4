import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


@pytest.mark.slow
def test_two_process_cpu_ddp_training_and_inference(tmp_path):
    """Lightning DDP on two CPU processes (gloo): training keeps replicas identical, inference covers every cell, and
    perturbation shared out over both processes gives a single process's results (in memory and in a store)."""
    worker = Path(__file__).with_name("ddp_worker.py")
    output = tmp_path / "result.json"
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    run = subprocess.run(
        [sys.executable, str(worker), str(output)], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(output.read_text())
    assert result["world"] == 2
    assert len(result["history"]["train_loss"]) == 2
    np.testing.assert_array_equal(np.load(tmp_path / "weights_rank0.npy"), np.load(tmp_path / "weights_rank1.npy"))
    ddp, local = np.load(tmp_path / "ddp.npy"), np.load(tmp_path / "local.npy")
    assert not np.isnan(ddp).any()
    np.testing.assert_allclose(ddp, local, atol=1e-5)
    one = pd.read_pickle(tmp_path / "perturb_local.pkl")
    assert one["cell"].nunique() == 8 and (one["affected"] != "cell").any()
    for name in ("perturb_ddp.pkl", "perturb_store.pkl"):
        other = pd.read_pickle(tmp_path / name)
        for column in ("cell", "perturbed", "affected"):  # the same rows in the same order
            assert other[column].astype(str).tolist() == one[column].astype(str).tolist(), (name, column)
        np.testing.assert_array_equal(other["cosine"].to_numpy(), one["cosine"].to_numpy())
    # two-stage screens over two processes (in memory and in a store) equal one process's, estimates included
    one = pd.read_pickle(tmp_path / "screen_local.pkl")
    assert 0 < one["confirmed"].sum() < len(one)
    for name in ("screen_ddp.pkl", "screen_store.pkl"):
        other = pd.read_pickle(tmp_path / name)
        for column in ("cell", "perturbed", "affected"):
            assert other[column].astype(str).tolist() == one[column].astype(str).tolist(), (name, column)
        np.testing.assert_array_equal(other["confirmed"].to_numpy(), one["confirmed"].to_numpy())
        np.testing.assert_array_equal(other["cosine"].to_numpy(), one["cosine"].to_numpy())
