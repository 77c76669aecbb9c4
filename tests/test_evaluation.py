"""Evaluation against baselines and figures for a paper (issue 22): scib-metrics benchmarks of embeddings, logistic
regression in the cross-validation folds, annotation with a probability threshold, confusion matrices and training
curves."""

from __future__ import annotations

import sys

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
from helpers import make_vocabulary, shared_path, tiny_bert_config

import scgeneformer as sgf

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def pbmc() -> ad.AnnData:
    """200 annotated PBMC 3k cells (raw counts), with the same cells' labels shuffled in ``obs["shuffled"]``."""
    adata = ad.read_h5ad(shared_path("data", "datasets", "pbmc3k_annotated.h5ad"))
    adata = adata[adata.obs["cell_type"] != "NA"]
    adata = adata[np.random.default_rng(0).choice(adata.n_obs, 200, replace=False)].copy()
    adata.obs["shuffled"] = np.random.default_rng(1).permutation(adata.obs["cell_type"].to_numpy())
    return adata


def synthetic(n_obs: int = 120, seed: int = 0) -> ad.AnnData:
    """Counts and an embedding of two well-separated groups of cells."""
    rng = np.random.default_rng(seed)
    groups = np.arange(n_obs) % 2
    counts = rng.poisson(2.0, (n_obs, 50)).astype(np.float32)
    counts[groups == 1, :10] += 20
    adata = ad.AnnData(counts)
    adata.obs["group"] = pd.Categorical(np.array(["a", "b"])[groups])
    adata.obsm["X_geneformer"] = rng.normal(size=(n_obs, 8)).astype(np.float32) + 5 * groups[:, None]
    return adata


# -- 1. embedding benchmark -------------------------------------------------------------------------------------------
def test_benchmark_needs_the_evaluation_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "scib_metrics", None)  # as if scib-metrics were not installed
    with pytest.raises(ImportError, match=r"scgeneformer\[evaluation\]"):
        sgf.tl.benchmark_embeddings(synthetic(), "group")


def test_benchmark_checks_its_arguments_before_importing_scib_metrics(monkeypatch):
    monkeypatch.setitem(sys.modules, "scib_metrics", None)  # every check below fails before the import would
    adata = synthetic()
    with pytest.raises(KeyError, match="X_scVI"):
        sgf.tl.benchmark_embeddings(adata, "group", embeddings=["X_geneformer", "X_scVI"])
    with pytest.raises(KeyError, match="sgf.tl.embed"):
        sgf.tl.benchmark_embeddings(ad.AnnData(adata.X, obs=adata.obs), "group")
    with pytest.raises(KeyError, match="label_key"):
        sgf.tl.benchmark_embeddings(adata, "cell_type")
    with pytest.raises(KeyError, match="batch_key"):
        sgf.tl.benchmark_embeddings(adata, "group", batch_key="donor")
    with pytest.raises(ValueError, match="at least 100"):
        sgf.tl.benchmark_embeddings(adata[:60].copy(), "group")
    adata.obsm["X_geneformer"][:30] = np.nan  # cells that were not encoded are left out: 90 remain
    with pytest.raises(ValueError, match="90 cells"):
        sgf.tl.benchmark_embeddings(adata, "group")
    with pytest.raises(ValueError, match="baseline"):
        sgf.tl.benchmark_embeddings(synthetic(), "group", embeddings="X_pca_hvg")


def test_benchmark_scores_true_labels_above_shuffled_ones_and_keeps_the_data(pbmc, tmp_path):
    pytest.importorskip("scib_metrics")
    from scgeneformer.tl._baselines import hvg_pca, log_normalized

    adata = pbmc.copy()
    # an embedding that keeps no structure: the baseline's coordinates given to other cells
    pca = hvg_pca(log_normalized(adata, None), n_comps=20)
    adata.obsm["X_scrambled"] = pca[np.random.default_rng(2).permutation(adata.n_obs)]
    before = adata.copy()
    assert sgf.tl.benchmark_embeddings(adata, "cell_type", embeddings="X_scrambled", n_comps=20) is None
    result = adata.uns["geneformer_benchmark"]
    table = result["metrics"]
    assert list(table.columns) == ["embedding", "metric", "metric_type", "value"]
    assert set(table["embedding"]) == {"X_scrambled", "X_pca_hvg"}
    assert {"Silhouette label", "KMeans NMI", "cLISI", "Bio conservation"} <= set(table["metric"])
    assert result["params"]["n_cells"] == 200 and "batch_key" not in result["params"]
    bio = table[table["metric"] == "Bio conservation"].set_index("embedding")["value"]
    assert bio["X_pca_hvg"] > bio["X_scrambled"] + 0.2
    # the same baseline with shuffled labels scores far lower
    shuffled = sgf.tl.benchmark_embeddings(adata, "shuffled", embeddings=[], n_comps=20, inplace=False)
    assert shuffled.set_index("metric").loc["Bio conservation", "value"] < bio["X_pca_hvg"] - 0.2

    # nothing but .uns[key_added] changed
    assert (adata.X != before.X).nnz == 0 and adata.obs.equals(before.obs) and adata.var.equals(before.var)
    assert set(adata.obsm) == set(before.obsm) and set(adata.layers) == set(before.layers)
    assert set(adata.uns) == set(before.uns) | {"geneformer_benchmark"}

    files = ((ad.AnnData.write_h5ad, ad.read_h5ad, "b.h5ad"), (ad.AnnData.write_zarr, ad.read_zarr, "b.zarr"))
    for write, read, name in files:
        write(adata, tmp_path / name)
        back = read(tmp_path / name).uns["geneformer_benchmark"]
        pd.testing.assert_frame_equal(back["metrics"], table, check_dtype=False, check_index_type=False)
        assert back["params"]["label_key"] == "cell_type"
        ax = sgf.pl.benchmark_embeddings(read(tmp_path / name), show=False)
        assert [t.get_text() for t in ax.get_yticklabels()] == ["X_pca_hvg", "X_scrambled"]  # best first
        assert "200 cells" in ax.get_title()


@pytest.mark.slow
def test_benchmark_scores_batch_correction(tmp_path):
    """Kang 2018: stimulated and control cells; removing each condition's mean from the PCA mixes them better."""
    pytest.importorskip("scib_metrics")
    adata = ad.read_h5ad(shared_path("data", "datasets", "kang2018_ifnb_832cells.h5ad"))
    adata = adata[np.random.default_rng(0).choice(adata.n_obs, 240, replace=False)].copy()
    from scgeneformer.tl._baselines import hvg_pca, log_normalized

    pca = hvg_pca(log_normalized(adata, None), n_comps=20)
    stim = (adata.obs["condition"] == "stim").to_numpy()
    centred = pca.copy()
    for group in (stim, ~stim):
        centred[group] -= centred[group].mean(0)
    adata.obsm["X_centred"] = centred
    table = sgf.tl.benchmark_embeddings(
        adata, "cell_type", batch_key="condition", embeddings="X_centred", n_comps=20, inplace=False
    )
    scores = table.pivot(index="embedding", columns="metric", values="value")
    assert {"iLISI", "KBET", "PCR comparison", "Batch correction", "Total"} <= set(scores.columns)
    assert scores.loc["X_centred", "Batch correction"] > scores.loc["X_pca_hvg", "Batch correction"]
    assert scores.loc["X_centred", "iLISI"] > scores.loc["X_pca_hvg", "iLISI"]
    total = 0.4 * scores["Batch correction"] + 0.6 * scores["Bio conservation"]
    np.testing.assert_allclose(scores["Total"], total, rtol=1e-6)


# -- 2. annotation against logistic regression in the same folds ------------------------------------------------------
def test_logistic_regression_baseline_in_cross_validation_folds(pbmc):
    adata = pbmc.copy()
    adata.obs.loc[adata.obs_names[:5], "cell_type"] = np.nan  # unlabelled cells are in no fold
    table = sgf.tl.baseline_classification_cv(
        adata, "cell_type", use_rep=["pca", "hvg"], n_folds=3, n_comps=20, inplace=False
    )
    assert list(table["method"].unique()) == ["logreg_pca", "logreg_hvg"]
    for _, part in table.groupby("method"):
        test_cells = [set(cells) for cells in part["test_cells"]]
        assert set.union(*test_cells) == set(adata.obs_names[5:]) and sum(map(len, test_cells)) == 195
    # PBMC types are easy for logistic regression on PCA (0.79 here); shuffled labels are not
    assert table.loc[table["method"] == "logreg_pca", "accuracy"].mean() > 0.7  # 8 types, some rare; 130 cells
    shuffled = sgf.tl.baseline_classification_cv(adata, "shuffled", n_folds=3, n_comps=20, inplace=False)
    assert shuffled["accuracy"].mean() < 0.5

    # the folds are those of cell_classification_cv (same n_folds, group_key, seed), also when read back from .uns
    from scgeneformer.tl._classifier_cv import cv_folds

    expected = cv_folds(adata, "cell_type", n_folds=3, group_key=None, seed=0)
    sgf.tl.baseline_classification_cv(adata, "cell_type", n_folds=3, n_comps=20)
    np.testing.assert_array_equal(adata.uns["baseline_cv"]["test_fold"], expected)
    adata.obsm["X_geneformer"] = np.random.default_rng(0).normal(size=(adata.n_obs, 4))  # a linear probe
    again = sgf.tl.baseline_classification_cv(
        adata, "cell_type", use_rep="X_geneformer", folds="baseline_cv", inplace=False
    )
    assert [set(c) for c in again["test_cells"]] == [set(c) for c in table["test_cells"][:3]]
    with pytest.raises(KeyError, match="obsm"):
        sgf.tl.baseline_classification_cv(adata, "cell_type", use_rep="X_scVI")
    with pytest.raises(KeyError, match="layer"):
        sgf.tl.baseline_classification_cv(adata, "cell_type", layer="counts")


@pytest.mark.slow
def test_cell_classification_cv_with_a_baseline_uses_the_same_folds():
    import torch
    from test_finetuning import FAST, labelled_data

    vocab = make_vocabulary("V1")
    adata = labelled_data(vocab)
    torch.manual_seed(0)
    model = sgf.GeneformerModel(bert_config=tiny_bert_config(vocab), vocabulary="V1")
    sgf.tl.cell_classification_cv(adata, model, "cell_type", n_folds=3, max_epochs=1, baseline=["pca", "hvg"], **FAST)
    folds = adata.uns["geneformer_cv"]["folds"]
    assert list(folds["method"]) == ["geneformer"] * 3 + ["logreg_pca"] * 3 + ["logreg_hvg"] * 3
    assert (folds.groupby("method")["n_test"].sum() == adata.n_obs).all()
    n_test = folds.pivot(index="fold", columns="method", values="n_test")
    assert (n_test.nunique(axis=1) == 1).all()  # every method tested on the same cells of each fold
    assert folds.loc[folds["method"] == "logreg_hvg", "accuracy"].min() > 0.9  # three separate gene programs
    assert folds.loc[folds["method"] != "geneformer", "validation_macro_f1"].isna().all()


# -- 5. figures and an "unknown" label --------------------------------------------------------------------------------
def test_annotate_labels_uncertain_cells_unknown(tmp_path):
    from helpers import encoded_counts

    vocab = make_vocabulary("V1")
    adata = encoded_counts(vocab, n_obs=20, n_vars=60)
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = sgf.GeneformerModel(adata, bert_config=tiny_bert_config(vocab), classes=["x", "y", "z"], vocabulary="V1")
    sgf.tl.annotate(adata, model)
    assert list(adata.obs["geneformer_label"].cat.categories) == ["x", "y", "z"]  # unchanged default
    probability = adata.obs["geneformer_label_probability"].to_numpy()
    threshold = float(np.median(probability))
    sgf.tl.annotate(adata, model, key_added="sure", min_probability=threshold)
    labels = adata.obs["sure"]
    assert list(labels.cat.categories) == ["x", "y", "z", "unknown"]
    unsure = probability < threshold
    assert 0 < unsure.sum() < adata.n_obs
    assert (labels[unsure] == "unknown").all()
    np.testing.assert_array_equal(labels[~unsure].astype(str), adata.obs["geneformer_label"][~unsure].astype(str))
    np.testing.assert_array_equal(adata.obs["sure_probability"], probability)
    assert adata.uns["sure"]["params"]["min_probability"] == threshold
    adata.write_h5ad(tmp_path / "a.h5ad")
    assert list(ad.read_h5ad(tmp_path / "a.h5ad").obs["sure"].cat.categories)[-1] == "unknown"
    with pytest.raises(ValueError, match="one of the classes"):
        sgf.tl.annotate(adata, model, min_probability=0.5, unknown_label="y")
    with pytest.raises(ValueError, match="between 0 and 1"):
        sgf.tl.annotate(adata, model, min_probability=50)


def test_confusion_matrix_shows_every_class_with_a_title():
    known = ["a"] * 4 + ["b"] * 3 + ["c"] * 2
    predicted = ["a", "a", "a", "b", "b", "b", "unknown", "a", "b"]  # "c" is never predicted
    adata = ad.AnnData(np.zeros((9, 1)))
    adata.obs["known"] = pd.Categorical(known)
    adata.obs["predicted"] = pd.Categorical(predicted, categories=["a", "b", "c", "d", "unknown"])  # "d": no cell
    ax = sgf.pl.confusion_matrix(adata, "known", "predicted", show=False)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c", "d", "unknown"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a (4)", "b (3)", "c (2)"]
    assert ax.get_title() == "predicted vs known: accuracy 0.56, 9 cells"
    shares = ax.images[0].get_array()
    np.testing.assert_allclose(shares[2], [0.5, 0.5, 0, 0, 0])  # the "c" cells, none predicted as "c"
    np.testing.assert_allclose(shares.sum(1), 1)
    ax = sgf.pl.confusion_matrix(adata, "known", "predicted", normalize=False, title="Query", show=False)
    assert ax.get_title() == "Query" and ax.images[0].get_array().sum() == 9
    adata.obs["known"] = known  # plain strings: sorted
    adata.obs["predicted"] = predicted
    ax = sgf.pl.confusion_matrix(adata, "known", "predicted", show=False)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c", "unknown"]


def test_training_history_plots_losses_and_metrics(tmp_path):
    import scanpy as sc

    epochs = pd.RangeIndex(4, name="epoch")
    history = {
        "train_loss": pd.DataFrame({"train_loss": [1.2, 0.9, 0.7, 0.6]}, index=epochs),
        "validation_loss": pd.DataFrame({"validation_loss": [1.3, 1.0, 0.9, 0.85]}, index=epochs),
        "validation_macro_f1": pd.DataFrame({"validation_macro_f1": [0.3, 0.5, 0.6, 0.65]}, index=epochs),
        "train_loss_step": pd.DataFrame({"train_loss_step": [1.0] * 4}, index=epochs),
    }

    class Trained:
        pass

    model = Trained()
    model.history = history
    ax = sgf.pl.training_history(model, show=False)
    assert [line.get_label() for line in ax.get_lines()] == ["train_loss", "validation_loss"]
    twin = [a for a in ax.figure.axes if a is not ax and a.get_ylabel() == "metric"][0]
    assert [line.get_label() for line in twin.get_lines()] == ["validation_macro_f1"]
    assert ax.get_xlabel() == "epoch" and ax.get_title() == "Training history"
    np.testing.assert_allclose(ax.get_lines()[1].get_ydata(), [1.3, 1.0, 0.9, 0.85])
    ax = sgf.pl.training_history(history, "validation_macro_f1", title=None, show=False)
    assert ax.get_ylabel() == "metric" and ax.get_title() == ""
    with pytest.raises(KeyError, match="recorded"):
        sgf.pl.training_history(history, "elbo_train")
    before = sc.settings.figdir
    try:
        sc.settings.figdir = tmp_path
        sgf.pl.training_history(model, save="_run.png", show=False)
    finally:
        sc.settings.figdir = before
    assert (tmp_path / "training_history_run.png").is_file()
