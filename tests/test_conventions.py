"""scanpy conventions, quiet defaults, offline files, model cards, orthologs and the command line (issue 13)."""

from __future__ import annotations

import hashlib
import inspect
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import (
    Mirror,
    encoded_counts,
    fake_gene_id,
    make_counts,
    make_vocabulary,
    tiny_bert_config,
    tiny_model,
    write_vocabulary_folder,
)

import scgeneformer as sgf

matplotlib.use("Agg")


# -- 1. scanpy conventions --------------------------------------------------------------------------------------------
@pytest.fixture
def perturbed():
    vocab = make_vocabulary("V1")
    adata = encoded_counts(vocab, n_obs=12, n_vars=40, seed=3)
    adata.obs["state"] = pd.Categorical(np.array(["a", "b", "c"])[np.arange(adata.n_obs) % 3])
    model = tiny_model(vocab)
    states = {"state_key": "state", "start_state": "a", "goal_state": "b"}
    assert sgf.tl.perturb(adata, model, "all", states=states, gene_shifts=True, vocabulary=vocab) is None
    assert sgf.tl.perturbation_stats(adata, "goal_state_shift") is None
    return adata


def test_plots_show_and_save_like_scanpy(perturbed, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    import scanpy as sc

    shown = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(True))
    before = (sc.settings.figdir, sc.settings.file_format_figs, sc.settings.autoshow)
    try:
        sc.settings.figdir, sc.settings.file_format_figs, sc.settings.autoshow = tmp_path / "figures", "png", True
        assert sgf.pl.perturbation_shifts(perturbed, save=True) is None  # shown, like sc.pl with autoshow
        assert shown == [True] and (tmp_path / "figures" / "perturbation_shifts.png").is_file()
        assert sgf.pl.perturbation_distribution(perturbed, save="_top.pdf", show=False) is not None
        assert (tmp_path / "figures" / "perturbation_distribution_top.pdf").read_bytes().startswith(b"%PDF")
        sc.settings.autoshow = False
        assert sgf.pl.perturbation_heatmap(perturbed, n_perturbed=2, n_affected=3) is not None
        _, ax = plt.subplots()
        assert sgf.pl.confusion_matrix(perturbed, "state", "state", ax=ax) is ax  # drawn into the caller's axes
        assert shown == [True]
        assert not [p for p in (tmp_path / "figures").iterdir() if p.name.startswith(".")]
    finally:
        sc.settings.figdir, sc.settings.file_format_figs, sc.settings.autoshow = before


def test_tools_return_none_in_place_and_tables_on_request():
    vocab = make_vocabulary("V1")
    adata = encoded_counts(vocab, n_obs=12, n_vars=40)
    adata.obs["state"] = np.where(np.arange(adata.n_obs) % 2, "x", "y")
    model = tiny_model(vocab)
    assert sgf.pp.rank_encode(adata, vocabulary=vocab) is None
    assert sgf.tl.embed(adata, model) is None
    assert sgf.tl.state_embeddings(adata, model, "state") is None
    assert isinstance(sgf.tl.state_embeddings(adata, model, "state", inplace=False), pd.DataFrame)
    out = sgf.tl.perturb(adata, model, "all", max_cells=1, vocabulary=vocab, inplace=False)
    assert set(out) == {"cells", "genes", "params"}
    assert isinstance(sgf.tl.perturbation_stats(out, "aggregate_data"), pd.DataFrame)  # a dict: nowhere to store
    assert sgf.tl.embed(adata, model, copy=True) is not adata


# -- 2. quiet by default, informative on request ----------------------------------------------------------------------
def test_one_switch_for_progress_bars_and_messages(capfd, monkeypatch):
    import scanpy as sc

    vocab = make_vocabulary("V1")
    adata = encoded_counts(vocab, n_obs=10)
    model = tiny_model(vocab)
    monkeypatch.setattr(sgf.settings, "_progress_bar", None)  # follow the verbosity, not the test suite's switch
    monkeypatch.setattr(sgf.settings, "_verbosity", None)
    scanpy_verbosity = sc.settings.verbosity
    sc.settings.verbosity = 1
    try:
        check_switches(sc, adata, model, capfd)
    finally:
        sc.settings.verbosity = scanpy_verbosity
        sgf.settings.verbosity = None


def check_switches(sc, adata, model, capfd):
    capfd.readouterr()
    sgf.tl.embed(adata, model)
    err = capfd.readouterr().err
    assert "embedding" in err and "embed: 10 cells" not in err  # a progress bar, no info messages
    sc.settings.verbosity = 0  # scanpy's switch silences sgf too
    sgf.tl.embed(adata, model)
    assert capfd.readouterr().err == ""
    sc.settings.verbosity = 1
    sgf.settings.verbosity = "error"
    sgf.tl.embed(adata, model)
    assert capfd.readouterr().err == ""
    sgf.settings.verbosity = "info"
    sgf.settings.progress_bar = False
    sgf.tl.embed(adata, model)
    err = capfd.readouterr().err
    assert "embed: 10 cells" in err and "%|" not in err
    sgf.settings.verbosity = None
    assert sgf.settings.log_level == 30


def test_fine_tuning_prints_no_third_party_noise(capfd, monkeypatch):
    import warnings

    vocab = make_vocabulary("V1")
    adata = encoded_counts(vocab, n_obs=30, n_vars=60)
    adata.obs["kind"] = pd.Categorical(np.array(["a", "b", "c"])[np.arange(30) % 3])
    sgf.GeneformerModel.setup_anndata(adata, labels_key="kind")
    model = sgf.GeneformerModel.from_pretrained(
        write_hf(adata, vocab), adata, vocabulary="V1"
    )  # trained weights: a history exists
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.train_classifier(max_epochs=1, execution={"accelerator": "cpu"})
    out, err = capfd.readouterr()
    for noise in ("Tip", "GPU available", "Training history cannot be updated", "LeafSpec", "log_every_n_steps"):
        assert noise not in out + err, noise
        assert not any(noise in str(w.message) for w in caught), noise


def write_hf(adata, vocab) -> Path:
    import tempfile

    folder = Path(tempfile.mkdtemp()) / "hf"
    tiny_model(vocab).module.mlm.save_pretrained(folder)
    return folder


# -- 3. offline and local files ---------------------------------------------------------------------------------------
def test_local_files_serve_every_download(tmp_path, isolated_settings, monkeypatch):
    from scgeneformer._hub import _registry

    vocab = make_vocabulary("V1")
    copies = write_vocabulary_folder(tmp_path / "copies" / "somewhere", vocab)
    files = {}
    for role, remote in _registry.DICTIONARY_FILES["V1"].items():
        local = copies / Path(remote.path).name
        files[role] = _registry.RemoteFile(
            remote.path, local.stat().st_size, hashlib.sha256(local.read_bytes()).hexdigest()
        )
    monkeypatch.setitem(_registry.DICTIONARY_FILES, "V1", files)
    isolated_settings.hub_url = "http://127.0.0.1:9/"  # any download attempt fails
    with pytest.raises(sgf.DownloadError, match="local_files"):
        sgf.Vocabulary.load("V1")
    isolated_settings.local_files = tmp_path / "copies"
    try:
        assert len(sgf.Vocabulary.load("V1")) == len(vocab)
    finally:
        isolated_settings.local_files = None


def test_perturb_reuses_the_vocabulary_the_data_were_encoded_with(tmp_path, isolated_settings):
    vocab = make_vocabulary("V1")
    folder = write_vocabulary_folder(tmp_path / "dictionaries", vocab)
    adata = make_counts()
    sgf.pp.rank_encode(adata, vocabulary=folder)
    isolated_settings.hub_url = "http://127.0.0.1:9/"  # the published V1 files cannot be downloaded
    results = sgf.tl.perturb(adata, tiny_model(vocab), "all", max_cells=1, inplace=False)
    assert results["cells"]["perturbed"].astype(str).str.startswith("GENE").all()  # named from the local folder


# -- 4. models know their data, model cards, the hub ------------------------------------------------------------------
def test_model_cards_and_loading_from_folders_and_the_hub(tmp_path, isolated_settings):
    vocab = make_vocabulary("V1")
    adata = encoded_counts(vocab, n_obs=30)
    model = sgf.GeneformerModel.from_pretrained(
        write_hf(adata, vocab), adata, vocabulary="V1"
    )  # no setup_anndata needed
    assert model.adata is adata and model.registry_["setup_args"]["encoding_key"] == "geneformer"
    model.classification_report_ = {"accuracy": 0.9, "macro_f1": 0.8, "n_cells": 3}
    model.save(tmp_path / "saved")
    card = sgf.model.read_model_card(tmp_path / "saved")
    assert card["library_name"] == "scgeneformer" and card["vocabulary"] == "V1"
    assert card["training_data"]["n_cells"] == 30 and card["metrics"]["accuracy"] == 0.9
    assert "accuracy 0.9000" in (tmp_path / "saved" / "README.md").read_text()
    again = sgf.GeneformerModel.from_pretrained(tmp_path / "saved")  # a saved model folder works too
    assert torch.equal(
        again.module.mlm.bert.embeddings.word_embeddings.weight, model.module.mlm.bert.embeddings.word_embeddings.weight
    )
    # a Hugging Face repository, offline: the hub cache (sgf.settings.cache_dir / "hub") already holds its snapshot
    snapshot = Path(isolated_settings.cache_dir) / "hub" / "models--lab--my-classifier" / "snapshots" / ("a" * 40)
    snapshot.parent.mkdir(parents=True)
    import shutil

    shutil.copytree(tmp_path / "saved", snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("a" * 40)
    from_hub = sgf.GeneformerModel.from_pretrained("lab/my-classifier")
    assert torch.equal(weights(from_hub), weights(model))
    with pytest.raises(FileNotFoundError, match="lab/missing"):
        sgf.GeneformerModel.from_pretrained("lab/missing")


def weights(model):
    return torch.cat([p.detach().flatten() for p in model.module.state_dict().values()])


# -- 5. orthologs -----------------------------------------------------------------------------------------------------
def test_mouse_genes_map_to_human_orthologs(tmp_path, isolated_settings, monkeypatch):
    from scgeneformer.pp import _orthologs

    vocab = make_vocabulary("V2")
    table = pd.DataFrame(
        {
            "Gene stable ID": ["ENSMUSG01", "ENSMUSG02", "ENSMUSG03", "ENSMUSG03", "ENSMUSG04", "ENSMUSG05"],
            "Gene name": ["Cd14", "Cd8b1", "Fcgr4", "Fcgr4", "Mt-nd1", "Gm1"],
            "Human gene name": ["CD14", "CD8B", "FCGR3A", "FCGR3B", "", ""],
            "Human gene stable ID": [fake_gene_id(1), fake_gene_id(2), fake_gene_id(3), fake_gene_id(4), None, None],
            "Human homology type": [
                "ortholog_one2one",
                "ortholog_one2one",
                "ortholog_one2many",
                "ortholog_one2many",
                None,
                None,
            ],
            "Human orthology confidence [0 low, 1 high]": ["1", "1", "1", "0", None, None],
            "Human Gene-order conservation score": ["100", "75", "50", "75", None, None],
        }
    )
    member = table.to_csv(index=False).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("pkg/mouse_to_human.csv", member)
    root = tmp_path / "mirror"
    root.mkdir()
    (root / "pkg-1.0-py3-none-any.whl").write_bytes(buffer.getvalue())
    with Mirror(root) as mirror:
        source = _orthologs.OrthologSource(
            url=mirror.url + "pkg-1.0-py3-none-any.whl",
            size=len(buffer.getvalue()),
            sha256=hashlib.sha256(buffer.getvalue()).hexdigest(),
            member="pkg/mouse_to_human.csv",
            member_sha256=hashlib.sha256(member).hexdigest(),
            description="test table",
        )
        monkeypatch.setitem(_orthologs.ORTHOLOG_SOURCES, "mouse", source)
        counts = make_counts(20, 5)
        counts.var["symbol"] = ["cd14", "Cd8b1", "Fcgr4", "ENSMUSG01.3", "Gm1", "Unknown", "Actb"][: counts.n_vars]
        sgf.pp.map_orthologs(counts, gene_id_key="symbol")
        mapped = counts.var["human_ensembl_id"].tolist()
        assert mapped[:2] == [fake_gene_id(1), fake_gene_id(2)] and pd.isna(mapped[2])  # one-to-one only
        assert mapped[3] == fake_gene_id(1) and pd.isna(mapped[4])
        report = counts.uns["human_ensembl_id"]
        assert report["n_mapped"] == 3 and report["n_human_genes_from_several"] == 1
        sgf.pp.map_orthologs(counts, gene_id_key="symbol", one_to_one=False, key_added="best")
        assert counts.var["best"].iloc[2] == fake_gene_id(3)  # the higher-confidence ortholog
        assert mirror.requests == ["/pkg-1.0-py3-none-any.whl"]  # downloaded once, then cached
        counts.var["title_case"] = ["Gene1", "Gene2", "Gene3", "Gene4", "Gene5", "Cd14", "Lyz2"]
        with pytest.warns(UserWarning, match="look like mouse symbols"):  # they would match GENE1... by case
            sgf.pp.rank_encode(counts, vocabulary=vocab, gene_id_key="title_case", key_added="by_name")
        with pytest.raises(ValueError, match="look like mouse genes"):
            sgf.pp.rank_encode(counts, vocabulary=vocab, gene_id_key="symbol")
        sgf.pp.rank_encode(counts, vocabulary=vocab, gene_id_key="human_ensembl_id", key_added="human")
        assert (counts.obs["human_n_tokens"] > 0).any()
    counts.write_h5ad(tmp_path / "mapped.h5ad")
    assert ad.read_h5ad(tmp_path / "mapped.h5ad").var["human_ensembl_id"].iloc[0] == fake_gene_id(1)


# -- 6. the command line ----------------------------------------------------------------------------------------------
def cli(*args, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "scgeneformer", *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env
    )
    if check:
        assert run.returncode == 0, run.stderr[-3000:]
    return run


@pytest.mark.slow
def test_command_line_round_trip(tmp_path):
    vocab = make_vocabulary("V1")
    folder = write_vocabulary_folder(tmp_path / "dictionaries", vocab)
    counts = make_counts(24, 300)
    counts.obs["state"] = np.array(["a", "b", "c"])[np.arange(24) % 3]
    counts.write_h5ad(tmp_path / "counts.h5ad")
    torch.manual_seed(0)
    model = sgf.GeneformerModel(bert_config=tiny_bert_config(vocab), vocabulary="V1", classes=["x", "y"])
    model.save(tmp_path / "model")
    cli("encode", "counts.h5ad", "-o", "encoded.h5ad", "--vocabulary", folder, cwd=tmp_path)
    run = cli("embed", "encoded.h5ad", "-o", "embedded.h5ad", "-m", "model", "--accelerator", "cpu", cwd=tmp_path)
    assert "embedding" in run.stderr and "wrote embedded.h5ad" in run.stderr  # progress and messages on stderr
    cli("annotate", "embedded.h5ad", "-o", "embedded.h5ad", "-m", "model", "--no-progress", cwd=tmp_path)
    cli(
        "perturb", "embedded.h5ad", "-o", "perturbed.h5ad", "-m", "model", "--state-key", "state",
        "--start-state", "a", "--goal-state", "b", "--max-cells", "2", "--table", "cells.csv", cwd=tmp_path,
    )  # fmt: skip
    cli("stats", "perturbed.h5ad", "-o", "stats.csv", "--mode", "goal_state_shift", cwd=tmp_path)
    result = ad.read_h5ad(tmp_path / "perturbed.h5ad")
    assert result.obsm["X_geneformer"].shape == (24, 32) and "geneformer_label" in result.obs
    expected = ad.read_h5ad(tmp_path / "encoded.h5ad")
    sgf.tl.embed(expected, sgf.GeneformerModel.load(tmp_path / "model"))
    np.testing.assert_allclose(result.obsm["X_geneformer"], expected.obsm["X_geneformer"], atol=1e-6)
    stats = pd.read_csv(tmp_path / "stats.csv")
    assert len(stats) == result.uns["geneformer_perturb"]["genes"].shape[0]
    assert len(pd.read_csv(tmp_path / "cells.csv")) == len(result.uns["geneformer_perturb"]["cells"])
    assert "Geneformer-V2-104M" in cli("models", cwd=tmp_path).stdout
    failed = cli("encode", "counts.h5ad", "-o", "x.h5ad", "--vocabulary", folder, "--gene-id-key", "nope",
                 cwd=tmp_path, check=False)  # fmt: skip
    assert failed.returncode == 1 and "error: gene_id_key 'nope' is not a .var column" in failed.stderr
    assert not (tmp_path / "x.h5ad").exists()
    assert cli("embed", "encoded.h5ad", cwd=tmp_path, check=False).returncode == 2  # usage error


# -- 7. docs ----------------------------------------------------------------------------------------------------------
def public_callables():
    import scgeneformer.model

    objects = [
        *(getattr(sgf.pp, n) for n in sgf.pp.__all__),
        *(getattr(sgf.tl, n) for n in sgf.tl.__all__),
        *(getattr(sgf.pl, n) for n in sgf.pl.__all__),
        *(getattr(scgeneformer.model, n) for n in scgeneformer.model.__all__ if not n.isupper()),
        sgf.Execution,
        sgf.EncodingInfo,
        sgf.Vocabulary,
        sgf.get_vocabulary,
        sgf.seed_cache,
        sgf.datasets.pbmc_example,
        type(sgf.settings),
    ]
    methods = [
        getattr(sgf.GeneformerModel, name)
        for name in (
            "from_pretrained", "load", "save", "copy", "train", "train_classifier", "train_gene_classifier",
            "get_embeddings", "get_latent_representation", "get_reconstruction_error", "predict", "predict_genes",
            "setup_anndata",
        )
    ]  # fmt: skip
    return objects + methods


@pytest.mark.parametrize("obj", public_callables(), ids=lambda o: getattr(o, "__qualname__", str(o)))
def test_public_docstrings_have_examples(obj):
    assert "Examples\n" in inspect.getdoc(obj), f"{obj.__qualname__} has no Examples section"
