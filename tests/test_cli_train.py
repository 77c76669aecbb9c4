"""``scgeneformer train``: fine-tune a classifier from a labelled file, then ``annotate`` with the folder it wrote."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from helpers import cli_status, encoded_counts, make_vocabulary, tiny_bert_config

import scgeneformer as sgf


def labelled_file(tmp_path, vocab) -> tuple:
    """48 encoded cells of two types expressing different genes, written as .h5ad; and a tiny saved base model."""
    adata = encoded_counts(vocab, n_obs=48, n_vars=120, seed=1)
    X = adata.X.toarray()
    kinds = np.arange(adata.n_obs) % 2
    X[np.ix_(kinds == 0, np.arange(60, 120))] = 0  # type A expresses the first 60 genes, type B the last 60
    X[np.ix_(kinds == 1, np.arange(0, 60))] = 0
    adata.X = sp.csr_matrix(X)
    sgf.pp.rank_encode(adata, vocabulary=vocab)
    adata.obs["cell_type"] = pd.Categorical(np.array(["A", "B"])[kinds])
    adata.obs["one_label"] = "A"
    path = tmp_path / "encoded.h5ad"
    adata.write_h5ad(path)
    torch.manual_seed(0)
    base = sgf.GeneformerModel(bert_config=tiny_bert_config(vocab), vocabulary="V2")
    base.save(tmp_path / "base")
    return path, tmp_path / "base"


def test_train_then_annotate_through_the_command_line(tmp_path, capsys):
    vocab = make_vocabulary("V2")
    path, base = labelled_file(tmp_path, vocab)
    folder = tmp_path / "classifier"
    args = ["train", str(path), "-o", str(folder), "-m", str(base), "--label", "cell_type", "--epochs", "3"]
    code = cli_status([*args, "--learning-rate", "3e-3", "--accelerator", "cpu", "--batch-size", "8", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "accuracy" in err and f"wrote {folder}" in err
    assert (folder / "model.json").is_file()
    assert sgf.model.read_model_card(folder)["classes"] == ["A", "B"]

    out = tmp_path / "annotated.h5ad"
    annotate = ["annotate", str(path), "-o", str(out), "-m", str(folder), "--accelerator", "cpu", "--no-progress"]
    assert cli_status(annotate) == 0
    annotated = ad.read_h5ad(out)
    labels = annotated.obs["geneformer_label"]
    assert set(labels.cat.categories) == {"A", "B"} and labels.notna().all()
    # The command line annotates through InferenceModel: the same labels as the trained model class gives.
    expected = sgf.GeneformerModel.load(folder).predict(annotated, execution={"accelerator": "cpu"})
    np.testing.assert_array_equal(labels.astype(str).to_numpy(), np.asarray(expected).astype(str))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--label", "no_such_column"], "--label no_such_column: no such .obs column"),
        (["--label", "one_label"], "--label one_label: a classifier needs at least two labels"),
        (["--label", "cell_type", "--epochs", "0"], "--epochs must be at least 1"),
    ],
)
def test_train_refuses_bad_options_before_any_work(tmp_path, capsys, extra, message):
    vocab = make_vocabulary("V2")
    path, base = labelled_file(tmp_path, vocab)
    folder = tmp_path / "classifier"
    capsys.readouterr()  # what preparing the file said
    assert cli_status(["train", str(path), "-o", str(folder), "-m", str(base), *extra]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not folder.exists()


def test_train_output_must_be_a_folder(tmp_path, capsys):
    vocab = make_vocabulary("V2")
    path, base = labelled_file(tmp_path, vocab)
    not_a_folder = tmp_path / "model.txt"
    not_a_folder.write_text("x")
    capsys.readouterr()
    assert cli_status(["train", str(path), "-o", str(not_a_folder), "-m", str(base), "--label", "cell_type"]) == 1
    assert "--output" in capsys.readouterr().err and not_a_folder.read_text() == "x"
