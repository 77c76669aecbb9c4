import matplotlib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from helpers import encoded_counts, make_vocabulary, tiny_bert_config

import scgeneformer as sgf
from scgeneformer.model._classifier import split_cells

matplotlib.use("Agg")


def labelled_data(vocab, n_obs=90, seed=0):
    """Three cell types expressing different gene programs (plus shared genes), and three donors."""
    adata = encoded_counts(vocab, n_obs=n_obs, n_vars=120, seed=seed)
    X = adata.X.toarray()
    kinds = np.arange(n_obs) % 3
    for kind in range(3):
        other = np.setdiff1d(np.arange(90), np.arange(kind * 30, kind * 30 + 30))
        X[np.ix_(kinds == kind, other)] = 0  # each type expresses its own 30 genes and the 30 shared ones
    adata.X = sp.csr_matrix(X)
    adata.obs["cell_type"] = pd.Categorical(np.array(["B", "NK", "T"])[kinds])
    adata.obs["donor"] = np.array(["d1", "d2", "d3"])[(np.arange(n_obs) // 3) % 3]
    sgf.pp.rank_encode(adata, vocabulary=vocab)
    return adata


def test_splits_are_stratified_or_grouped():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    train, val, test = split_cells(labels, train_size=0.8, validation_size=0.1, seed=0)
    assert sorted(np.concatenate([train, val, test])) == list(range(100))
    for label, n in ((0, 50), (1, 30), (2, 20)):
        assert (labels[train] == label).sum() == round(0.8 * n)
    groups = np.repeat(list("abcdefghij"), 10)
    train, val, test = split_cells(labels, groups=groups, train_size=0.6, validation_size=0.2, seed=0)
    sets = [set(groups[s]) for s in (train, val, test)]
    assert [len(s) for s in sets] == [6, 2, 2] and not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])


@pytest.mark.slow
def test_fine_tune_annotate_save_load(tmp_path):
    vocab = make_vocabulary("V2")
    adata = labelled_data(vocab)
    sgf.GeneformerModel.setup_anndata(adata, labels_key="cell_type")
    torch.manual_seed(0)
    model = sgf.GeneformerModel(adata, bert_config=tiny_bert_config(vocab), vocabulary="V2")
    report = model.train_classifier(
        max_epochs=10,
        freeze_layers=1,
        plan_kwargs={"lr": 3e-3},
        execution={"accelerator": "cpu", "batch_size": 8},
        enable_progress_bar=False,
    )
    assert report["classes"] == ["B", "NK", "T"]
    assert report["confusion_matrix"].sum() == report["n_cells"] == len(report["test_cells"]) == 9
    # A tiny random-weight model learns slowly; well above chance (1/3) and a falling loss show it learns.
    assert report["accuracy"] > 0.6
    train_loss = model.history_["train_loss"].to_numpy().ravel().astype(float)
    assert train_loss[-1] < 0.7 * train_loss[0]
    assert "validation_macro_f1" in model.history_
    first_layer = model.module.mlm.bert.encoder.layer[0]
    assert not any(p.requires_grad for p in first_layer.parameters())

    query = adata[:, 5:].copy()  # other genes than in training: re-encode and annotate
    sgf.pp.rank_encode(query, vocabulary=vocab)
    sgf.tl.annotate(query, model)
    assert list(query.obs["geneformer_label"].cat.categories) == ["B", "NK", "T"]
    assert (query.obs["geneformer_label"] == query.obs["cell_type"]).mean() > 0.6
    probabilities = query.obsm["geneformer_label_probabilities"]
    np.testing.assert_allclose(probabilities.sum(1), 1, rtol=1e-5)
    np.testing.assert_allclose(query.obs["geneformer_label_probability"], probabilities.max(1), rtol=1e-6)

    model.save(tmp_path / "classifier")
    loaded = sgf.GeneformerModel.load(tmp_path / "classifier")
    assert loaded.checkpoint == model.checkpoint == "classifier" and loaded.classes == ["B", "NK", "T"]
    sgf.tl.annotate(query, loaded, key_added="again")
    np.testing.assert_array_equal(query.obs["again"], query.obs["geneformer_label"])
    np.testing.assert_allclose(query.obsm["again_probabilities"], probabilities, atol=1e-6)

    ax = sgf.pl.confusion_matrix(query, "cell_type", show=False)
    assert len(ax.get_xticklabels()) == 3


def test_annotate_needs_a_head_and_labels():
    vocab = make_vocabulary("V1")
    adata = encoded_counts(vocab)
    model = sgf.GeneformerModel(bert_config=tiny_bert_config(vocab), vocabulary="V1")
    with pytest.raises(ValueError, match="classification head"):
        sgf.tl.annotate(adata, model)
    sgf.GeneformerModel.setup_anndata(adata)
    with pytest.raises(ValueError, match="labels_key"):
        sgf.GeneformerModel(adata, bert_config=tiny_bert_config(vocab), vocabulary="V1").train_classifier()


def test_bad_arguments_leave_a_fine_tuned_model_intact():
    """Every argument is checked before the model changes: a fine-tuned head and its weights survive a bad call."""
    vocab = make_vocabulary("V1")
    adata = labelled_data(vocab, n_obs=30)
    sgf.GeneformerModel.setup_anndata(adata, labels_key="cell_type")
    torch.manual_seed(0)
    model = sgf.GeneformerModel(adata, bert_config=tiny_bert_config(vocab), classes=["x", "y"], vocabulary="V1")
    head = model.module.classifier
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    trainable = [p.requires_grad for p in model.module.parameters()]
    bad_calls = [
        ({"freeze_layers": 99}, ValueError, "freeze_layers"),
        ({"freeze_layers": -1}, ValueError, "freeze_layers"),
        ({"pooling": "cls"}, ValueError, "V2"),
        ({"group_key": "donor_id"}, KeyError, "group_key"),
        ({"train_size": 0.95, "validation_size": 0.1}, ValueError, "exceed"),
        ({"plan_kwargs": {"lr": -1}}, ValueError, "lr"),
        ({"plan_kwargs": {"learning_rate": 1e-3}}, TypeError, "plan_kwargs"),
        ({"execution": {"devices_": 2}}, TypeError, "execution"),
    ]
    for kwargs, error, match in bad_calls:
        with pytest.raises(error, match=match):
            model.train_classifier(max_epochs=1, **kwargs)
        assert model.module.classifier is head and model.classes == ["x", "y"]
        assert all(torch.equal(v, model.module.state_dict()[k]) for k, v in before.items())
        assert [p.requires_grad for p in model.module.parameters()] == trainable
    with pytest.raises(ValueError, match="freeze_layers"):
        model.train_gene_classifier({"a": list(adata.var_names[:3]), "b": list(adata.var_names[3:6])}, freeze_layers=9)
    assert model.module.gene_classifier is None and model.gene_classes is None
