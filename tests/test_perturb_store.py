"""Perturbation results streamed to a store (issue 11): resume after kill -9, refusal of other runs, chunked stats."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import encoded_counts, make_vocabulary, tiny_bert_config, write_vocabulary_folder

import scgeneformer as sgf
from scgeneformer.tl._perturb import _planning

QUIET = {"accelerator": "cpu", "progress_bar": False}
PART_TOKENS = 4000  # parts of a few cells each, so that a run has many parts


@pytest.fixture
def screen(tmp_path, monkeypatch):
    """Encoded data with states, a saved model and its vocabulary folder, on disk for a second process."""
    monkeypatch.setattr(_planning, "CHUNK_TOKENS", PART_TOKENS)
    vocab = make_vocabulary("V2")
    adata = encoded_counts(vocab, n_obs=30)
    adata.obs["state"] = np.array(["sick", "healthy"])[np.arange(30) % 2]
    adata.write_h5ad(tmp_path / "data.h5ad")
    torch.manual_seed(0)
    model = sgf.GeneformerModel(bert_config=tiny_bert_config(vocab), vocabulary="V2")
    model.save(tmp_path / "model")
    folder = write_vocabulary_folder(tmp_path / "vocabulary", vocab)
    options = {
        "states": {"state_key": "state", "start_state": "sick", "goal_state": "healthy"},
        "gene_shifts": True,
        "vocabulary": str(folder),
        "execution": QUIET,
    }
    return tmp_path, adata, model, options


CHILD = """
import sys, time
import anndata as ad
import scgeneformer as sgf
from scgeneformer.tl._perturb import _engine, _planning

_planning.CHUNK_TOKENS = {part_tokens}
run_chunk = _engine.run_chunk


def slow_chunk(*args, **kwargs):  # give the test time to kill the run between parts
    time.sleep(0.4)
    return run_chunk(*args, **kwargs)


_engine.run_chunk = slow_chunk
adata = ad.read_h5ad("{root}/data.h5ad")
model = sgf.GeneformerModel.load("{root}/model")
sgf.tl.perturb(adata, model, "all", out="{root}/store", **{options!r})
"""


@pytest.mark.filterwarnings("ignore:Writing zarr v2 data:UserWarning")  # anndata's notice about its next default
def test_a_killed_screen_resumes_to_the_uninterrupted_results(screen):
    root, adata, model, options = screen
    script = root / "child.py"
    script.write_text(textwrap.dedent(CHILD.format(part_tokens=PART_TOKENS, root=root, options=options)))
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    parts = root / "store" / "parts"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(parts.glob("part-*.parquet"))) < 2:
        assert child.poll() is None, child.stdout.read().decode()[-3000:]
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)  # kill -9 in the middle of the screen
    child.wait()
    written = len(list(parts.glob("part-*.parquet")))
    manifest = (root / "store" / "manifest.json").read_text()
    assert 2 <= written < sgf.tl.PerturbationStore(root / "store").manifest["n_parts"], manifest

    sgf.tl.perturb(adata, model, "all", out=root / "store", **options)  # resumes: only the missing parts run
    assert len(list(parts.glob("part-*.parquet"))) > written
    assert not list(parts.glob(".*tmp*"))  # the killed part's temporary file was never renamed
    result = adata.uns["geneformer_perturb"]
    assert set(result) == {"path", "run", "genes", "params", "n_rows"}  # a summary and the path, not the table
    uninterrupted = sgf.tl.perturb(adata, model, "all", inplace=False, **options)
    stored = sgf.tl.read_perturbation_store(root / "store")
    assert result["n_rows"] == len(uninterrupted["cells"]) == len(stored["cells"])
    for column in uninterrupted["cells"]:
        expected, got = uninterrupted["cells"][column], stored["cells"][column]
        if isinstance(expected.dtype, pd.CategoricalDtype):
            assert got.astype(str).tolist() == expected.astype(str).tolist(), column
        else:
            np.testing.assert_array_equal(got.to_numpy(), expected.to_numpy(), err_msg=column)
    summary, expected = result["genes"], uninterrupted["genes"]
    assert summary["perturbed"].tolist() == expected["perturbed"].tolist()
    np.testing.assert_allclose(summary["shift_healthy_mean"], expected["shift_healthy_mean"], rtol=1e-6, atol=1e-7)

    # statistics and plots read the store (cell rows only; gene shifts part by part) like the table in memory
    for mode in ("goal_state_shift", "aggregate_data"):
        from_store = sgf.tl.perturbation_stats(adata, mode, inplace=False)
        in_memory = sgf.tl.perturbation_stats(uninterrupted, mode)
        pd.testing.assert_frame_equal(from_store, in_memory, check_categorical=False, check_dtype=False)
    shifts = sgf.tl.perturbation_stats(adata, "aggregate_gene_shifts", inplace=False)
    reference = sgf.tl.perturbation_stats(uninterrupted, "aggregate_gene_shifts")
    assert len(shifts) == len(reference)
    merged = reference.merge(shifts, on=["perturbed_token", "affected_token"], suffixes=("", "_store"))
    np.testing.assert_allclose(merged["cosine_mean_store"], merged["cosine_mean"], rtol=1e-6)
    np.testing.assert_allclose(merged["cosine_std_store"], merged["cosine_std"], atol=1e-5)
    import matplotlib

    matplotlib.use("Agg")
    sgf.pl.perturbation_shifts(adata, show=False)
    sgf.pl.perturbation_heatmap(adata, show=False)

    adata.write_h5ad(root / "with_results.h5ad")  # the summary and path survive a round trip
    adata.write_zarr(root / "with_results.zarr")
    for back in (ad.read_h5ad(root / "with_results.h5ad"), ad.read_zarr(root / "with_results.zarr")):
        assert len(sgf.tl.perturbation_stats(back, "goal_state_shift", inplace=False)) == len(expected)


def test_a_store_refuses_another_run_and_foreign_folders(screen):
    root, adata, model, options = screen
    sgf.tl.perturb(adata, model, "all", max_cells=4, out=root / "store", **options)
    with pytest.raises(ValueError, match="different perturbation run.*layer"):
        sgf.tl.perturb(adata, model, "all", max_cells=4, layer=0, out=root / "store", **options)
    other = sgf.GeneformerModel.load(root / "model")
    with torch.no_grad():
        other.module.mlm.bert.embeddings.word_embeddings.weight[5] += 1
    with pytest.raises(ValueError, match="model_weights"):
        sgf.tl.perturb(adata, other, "all", max_cells=4, out=root / "store", **options)
    with pytest.raises(ValueError, match="cells"):
        sgf.tl.perturb(adata, model, "all", max_cells=5, out=root / "store", **options)
    (root / "elsewhere").mkdir()
    (root / "elsewhere" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a perturbation store"):
        sgf.tl.perturb(adata, model, "all", max_cells=4, out=root / "elsewhere", **options)
    with pytest.raises(FileNotFoundError, match="not a perturbation store"):
        sgf.tl.read_perturbation_store(root / "elsewhere")
    assert Path(root / "elsewhere" / "notes.txt").read_text() == "mine"
