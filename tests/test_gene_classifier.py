import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from helpers import fake_gene_id, make_vocabulary, tiny_bert_config

import scgeneformer as sgf
from scgeneformer import EncodingInfo
from scgeneformer.model import GeneLabels

N_PER_CLASS = 20
FAST = {"execution": {"accelerator": "cpu"}, "enable_progress_bar": False}


def gene_data(vocab, n_obs=60, seed=0):
    """Class "high" genes are always highly expressed (top ranks), class "low" genes barely (bottom ranks).

    Twenty unlabelled genes in between, one gene expressed in no cell and one outside the vocabulary.
    """
    rng = np.random.default_rng(seed)
    n_genes = 3 * N_PER_CLASS
    X = np.zeros((n_obs, n_genes + 2), dtype=np.float32)
    X[:, :N_PER_CLASS] = rng.integers(100_000, 200_000, (n_obs, N_PER_CLASS))
    X[:, N_PER_CLASS : 2 * N_PER_CLASS] = 1
    X[:, 2 * N_PER_CLASS : n_genes] = rng.integers(2, 20, (n_obs, N_PER_CLASS))
    X[:, :n_genes][rng.random((n_obs, n_genes)) < 0.5] = 0
    X[:, -1] = 5  # outside the vocabulary; the column before it stays empty
    var_names = [fake_gene_id(i) for i in range(1, n_genes + 2)] + ["NOT_A_GENE"]
    adata = ad.AnnData(
        sp.csr_matrix(X), obs=pd.DataFrame(index=[f"c{i}" for i in range(n_obs)]), var=pd.DataFrame(index=var_names)
    )
    adata.var["symbol"] = [f"GENE{i}" for i in range(1, n_genes + 2)] + ["NOT_A_GENE"]
    kinds = ["high"] * N_PER_CLASS + ["low"] * N_PER_CLASS + [None] * N_PER_CLASS + ["low", "high"]
    adata.var["kind"] = pd.Categorical(kinds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sgf.pp.rank_encode(adata, vocabulary=vocab)
    return adata


def test_gene_labels_map_to_tokens_of_the_data():
    vocab = make_vocabulary("V2")
    adata = gene_data(vocab)
    info = EncodingInfo(adata)
    from_column = GeneLabels.resolve(info, "kind")
    assert from_column.classes == ["high", "low"]
    # The never-expressed and out-of-vocabulary genes are left out.
    assert len(from_column.tokens) == 2 * N_PER_CLASS
    np.testing.assert_array_equal(from_column.tokens, info.var_token[: 2 * N_PER_CLASS])
    np.testing.assert_array_equal(from_column.codes, np.repeat([0, 1], N_PER_CLASS))
    # Ensembl IDs in any case and with a version suffix; unknown genes are ignored.
    as_dict = {
        "high": [g.lower() + ".7" for g in adata.var_names[:N_PER_CLASS]] + ["ENSG77777777777"],
        "low": list(adata.var_names[N_PER_CLASS : 2 * N_PER_CLASS]),
    }
    from_dict = GeneLabels.resolve(info, as_dict)
    np.testing.assert_array_equal(from_dict.tokens, from_column.tokens)
    np.testing.assert_array_equal(from_dict.codes, from_column.codes)
    lookup = from_dict.subset([0, N_PER_CLASS]).lookup(len(vocab))
    assert (lookup >= 0).sum() == 2 and lookup[from_dict.tokens[N_PER_CLASS]] == 1 and lookup[0] == -100
    # Cells holding a labelled gene: those expressing gene 0 or gene N_PER_CLASS.
    cells = np.flatnonzero(info.cells_holding(from_dict.tokens[[0, N_PER_CLASS]]))
    expected = np.flatnonzero((adata.X[:, [0, N_PER_CLASS]].toarray() > 0).any(1))
    np.testing.assert_array_equal(cells, expected)

    # Symbols match through the gene_id_key column used for encoding.
    by_symbol = adata.copy()
    by_symbol.var_names = [f"name{i}" for i in range(by_symbol.n_vars)]
    sgf.pp.rank_encode(by_symbol, vocabulary=vocab, gene_id_key="symbol")
    symbols = {"high": ["gene1", "GENE2"], "low": ["GENE21"]}
    assert len(GeneLabels.resolve(EncodingInfo(by_symbol), symbols).tokens) == 3

    with pytest.raises(ValueError, match="None of the genes"):
        GeneLabels.resolve(info, {"a": ["ENSG77777777777"], "b": [adata.var_names[-2]]})
    with pytest.raises(ValueError, match="at least two classes"):
        GeneLabels.resolve(info, {"a": list(adata.var_names[:5])})
    with pytest.raises(ValueError, match="more than one class"):
        GeneLabels.resolve(info, {"a": list(adata.var_names[:5]), "b": list(adata.var_names[4:8])})
    with pytest.raises(KeyError, match="neither a .var column"):
        GeneLabels.resolve(info, "no_such_column")
    with pytest.raises(TypeError, match="list of genes"):
        GeneLabels.resolve(info, {"a": "ENSG00000000001"})


def test_gene_loss_counts_labelled_positions_only():
    vocab = make_vocabulary("V1")
    torch.manual_seed(0)
    module = sgf.model.GeneformerModule(tiny_bert_config(vocab), n_gene_classes=3).eval()
    ids = torch.randint(2, len(vocab), (4, 10))
    mask = torch.ones_like(ids)
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[3, 7] = 1, 2
    tensors = {"input_ids": ids, "attention_mask": mask, "gene_labels": labels}
    _, generative, loss = module(tensors)
    logits = module.classify_genes(ids, mask)
    expected = torch.nn.functional.cross_entropy(logits[[0, 3], [2, 7]], torch.tensor([1, 2]))
    torch.testing.assert_close(loss.loss, expected)
    assert generative["gene_logits"].shape == (2, 3) and loss.n_obs_minibatch == 4
    _, _, empty = module({**tensors, "gene_labels": torch.full_like(ids, -100)})
    empty.loss.backward()  # a batch without labelled genes contributes nothing
    assert empty.loss.item() == 0
    _, _, mlm = module({"input_ids": ids, "attention_mask": mask, "mlm_labels": labels})
    assert "masked_accuracy" in mlm.extra_metrics  # masked-gene training is unchanged


def test_gene_head_needs_training():
    vocab = make_vocabulary("V1")
    adata = gene_data(vocab)
    model = sgf.GeneformerModel(bert_config=tiny_bert_config(vocab), vocabulary="V1")
    with pytest.raises(ValueError, match="gene-classification head"):
        sgf.tl.classify_genes(adata, model)
    with pytest.raises(ValueError, match="no training data"):
        model.train_gene_classifier("kind")
    with pytest.raises(ValueError, match="at least n_folds=25"):
        sgf.tl.gene_classification_cv(adata, model, "kind", n_folds=25)


@pytest.mark.slow
def test_train_classify_save_load(tmp_path):
    vocab = make_vocabulary("V2")
    adata = gene_data(vocab)
    sgf.GeneformerModel.setup_anndata(adata)
    torch.manual_seed(0)
    model = sgf.GeneformerModel(adata, bert_config=tiny_bert_config(vocab), vocabulary="V2")
    model.train_gene_classifier(
        "kind", max_epochs=6, freeze_layers=1, plan_kwargs={"lr": 3e-3, "warmup_steps": 0}, **FAST
    )
    assert model.gene_classes == ["high", "low"] and model.classes is None
    loss = model.history_["train_loss"].to_numpy().ravel().astype(float)
    assert loss[-1] < 0.5 * loss[0]
    assert "validation_loss" in model.history_ and len(model.validation_indices) == 6
    assert not any(p.requires_grad for p in model.module.mlm.bert.encoder.layer[0].parameters())
    assert model.module.mlm.bert.embeddings.word_embeddings.weight.requires_grad  # tied to the unused MLM decoder

    sgf.tl.classify_genes(adata, model)
    var = adata.var
    probabilities = var[["geneformer_gene_class_high", "geneformer_gene_class_low"]].to_numpy()
    seen = np.arange(adata.n_vars) < 3 * N_PER_CLASS
    np.testing.assert_allclose(probabilities[seen].sum(1), 1, rtol=1e-5)
    assert np.isnan(probabilities[~seen]).all() and var["geneformer_gene_class"][~seen].isna().all()
    assert list(var["geneformer_gene_class"].cat.categories) == ["high", "low"]
    labelled = var["kind"].notna().to_numpy() & seen
    assert (var["geneformer_gene_class"][labelled] == var["kind"][labelled]).mean() > 0.9
    assert (var["geneformer_gene_class_n_cells"][seen] > 0).all()

    model.save(tmp_path / "gene_classifier")
    loaded = sgf.GeneformerModel.load(tmp_path / "gene_classifier")
    assert loaded.gene_classes == ["high", "low"]
    sgf.tl.classify_genes(adata, loaded, key_added="again")
    np.testing.assert_allclose(var[["again_high", "again_low"]].to_numpy(), probabilities, atol=1e-6)


@pytest.mark.slow
def test_cross_validation_over_genes():
    vocab = make_vocabulary("V1")
    adata = gene_data(vocab)
    torch.manual_seed(0)
    model = sgf.GeneformerModel(bert_config=tiny_bert_config(vocab), vocabulary="V1")
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    lr = {"lr": 3e-3, "warmup_steps": 0}
    table = sgf.tl.gene_classification_cv(
        adata, model, "kind", n_folds=3, max_epochs=6, plan_kwargs=lr, inplace=False, **FAST
    )
    assert list(table["fold"]) == [0, 1, 2]
    assert table["n_test_genes"].sum() == 2 * N_PER_CLASS
    assert (table["n_train_genes"] + table["n_test_genes"] == 2 * N_PER_CLASS).all()
    for metric in ("roc_auc", "macro_f1", "accuracy"):
        assert table[metric].between(0, 1).all()
    assert table["roc_auc"].mean() > 0.7  # held-out genes are recognised by their rank alone
    assert "geneformer_gene_cv" not in adata.uns  # inplace=False
    # The given model is left as it was.
    assert model.module.gene_classifier is None and model.gene_classes is None
    assert all(torch.equal(v, model.module.state_dict()[k]) for k, v in before.items())
