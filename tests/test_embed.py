import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from helpers import encoded_counts, make_vocabulary, tiny_model

import scgeneformer as sgf


@pytest.fixture(params=["V1", "V2"])
def setup(request):
    vocab = make_vocabulary(request.param)
    return vocab, encoded_counts(vocab), tiny_model(vocab, layers=3)


def reference_embedding(model, sequence, n_hidden, pooling, special):
    """Plain transformers on one unpadded cell: all hidden states, then pooling."""
    with torch.inference_mode():
        out = model.module.mlm.bert(input_ids=torch.as_tensor(sequence)[None].long(), output_hidden_states=True)
    hidden = out.hidden_states[n_hidden][0]
    if pooling == "cls":
        return hidden[0].numpy()
    return (hidden[1:-1] if special else hidden).mean(0).numpy()


@pytest.mark.parametrize(("layer", "n_hidden"), [(-1, 2), (0, 3), (-3, 0), (1, 1), (3, 3)])
def test_layers_and_pooling_match_plain_transformers(setup, layer, n_hidden):
    vocab, adata, model = setup
    poolings = ["mean", "cls"] if vocab.has_special_tokens else ["mean"]
    sequences = sgf.pp.input_ids(adata)
    for pooling in poolings:
        sgf.tl.embed(adata, model, layer=layer, pooling=pooling)
        for i in (0, 5, 17):
            expected = reference_embedding(model, sequences[i], n_hidden, pooling, vocab.has_special_tokens)
            np.testing.assert_allclose(adata.obsm["X_geneformer"][i], expected, atol=1e-5)
    assert adata.uns["geneformer_embed"]["params"]["hidden_state"] == n_hidden


def test_batch_composition_does_not_change_embeddings(setup):
    _, adata, model = setup
    sgf.tl.embed(adata, model, execution={"token_budget": 10**6}, key_added="big")
    sgf.tl.embed(adata, model, execution={"token_budget": 1}, key_added="single")
    sgf.tl.embed(adata, model, execution=sgf.Execution(batch_size=3), key_added="three")
    np.testing.assert_allclose(adata.obsm["X_big"], adata.obsm["X_single"], atol=1e-5)
    np.testing.assert_allclose(adata.obsm["X_big"], adata.obsm["X_three"], atol=1e-5)
    subset = adata[[3, 1, 20]].copy()
    sgf.tl.embed(subset, model)
    np.testing.assert_allclose(subset.obsm["X_geneformer"], adata.obsm["X_big"][[3, 1, 20]], atol=1e-5)


def test_gene_embeddings_average_over_cells(setup):
    vocab, adata, model = setup
    sgf.tl.embed(adata, model, gene_embeddings=True)
    sequences = sgf.pp.input_ids(adata)
    gene_col = 7
    token = adata.var["geneformer_token"].iloc[gene_col]
    states = []
    for seq in sequences:
        with torch.inference_mode():
            hidden = model.module.mlm.bert(input_ids=torch.as_tensor(seq)[None].long(), output_hidden_states=True)
        positions = np.flatnonzero(seq == token)
        states += [hidden.hidden_states[2][0, p].numpy() for p in positions]
    np.testing.assert_allclose(adata.varm["geneformer_genes"][gene_col], np.mean(states, 0), atol=1e-5)
    assert adata.var["geneformer_genes_n_cells"].iloc[gene_col] == len(states)
    assert np.isnan(adata.varm["geneformer_genes"][-1]).all()  # a gene outside the vocabulary
    adata.obs["first_half"] = np.arange(adata.n_obs) < adata.n_obs // 2
    sgf.tl.embed(adata, model, gene_embeddings=True, gene_embedding_cells="first_half", key_added="h")
    assert (adata.var["h_genes_n_cells"] <= adata.var["geneformer_genes_n_cells"]).all()
    assert adata.var["h_genes_n_cells"].sum() < adata.var["geneformer_genes_n_cells"].sum()


def test_state_embeddings(setup):
    _, adata, model = setup
    adata.obs["state"] = pd.Categorical(np.where(np.arange(adata.n_obs) % 3 == 0, "a", "b"))
    sgf.tl.embed(adata, model)
    sgf.tl.state_embeddings(adata, model, "state")
    table = adata.uns["state_geneformer_states"]["embeddings"]
    for state in ("a", "b"):
        member = adata.obsm["X_geneformer"][adata.obs["state"] == state]
        np.testing.assert_allclose(table.loc[state].to_numpy(), member.mean(0), atol=1e-5)
    median = sgf.tl.state_embeddings(adata, model, "state", summary="median", groups=["b"], inplace=False)
    member = adata.obsm["X_geneformer"][adata.obs["state"] == "b"]
    np.testing.assert_allclose(median.loc["b"].to_numpy(), np.median(member, 0), atol=1e-5)
    assert "state_geneformer_states" in adata.uns
    with pytest.raises(ValueError, match="no encoded cells"):
        sgf.tl.state_embeddings(adata, model, "state", groups=["c"])
    with pytest.raises(KeyError, match="groupby"):
        sgf.tl.state_embeddings(adata, model, "condition")


def test_errors_before_any_work(setup):
    vocab, adata, model = setup
    other = make_vocabulary("V2" if vocab.version == "V1" else "V1")
    with pytest.raises(ValueError, match="rank-encoded with the"):
        sgf.tl.embed(adata, tiny_model(other))
    with pytest.raises(ValueError, match="does not exist"):
        sgf.tl.embed(adata, model, layer=4)
    with pytest.raises(ValueError, match="pooling"):
        sgf.tl.embed(adata, model, pooling="max")
    if not vocab.has_special_tokens:
        with pytest.raises(ValueError, match="cls"):
            sgf.tl.embed(adata, model, pooling="cls")
    with pytest.raises(KeyError, match="not rank-encoded"):
        sgf.tl.embed(ad.AnnData(np.ones((2, 2))), model)
    assert "X_geneformer" not in adata.obsm


def test_unencoded_cells_get_nan_and_copy_and_mudata(vocab_v2):
    adata = encoded_counts(vocab_v2)
    adata.obs["geneformer_n_tokens"] = adata.obs["geneformer_n_tokens"].where(np.arange(adata.n_obs) != 2, 0)
    ranks = adata.layers["geneformer_ranks"].toarray()
    ranks[2] = 0  # as if cell 2 had been filtered out at encoding
    adata.layers["geneformer_ranks"] = sp.csr_matrix(ranks)
    model = tiny_model(vocab_v2)
    out = sgf.tl.embed(adata, model, copy=True)
    assert "X_geneformer" not in adata.obsm
    emb = out.obsm["X_geneformer"]
    assert np.isnan(emb[2]).all() and not np.isnan(np.delete(emb, 2, axis=0)).any()
    mdata = md.MuData({"rna": out})
    sgf.tl.embed(mdata, model, key_added="mu")
    np.testing.assert_allclose(mdata.mod["rna"].obsm["X_mu"], emb, atol=1e-6)
