import warnings

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from helpers import expected_tokens, fake_gene_id, make_counts, make_vocabulary

import scgeneformer as sgf


def encode(adata, vocab, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return sgf.pp.rank_encode(adata, vocabulary=vocab, **kwargs)


def sequences(adata, **kwargs):
    return [s.tolist() for s in sgf.pp.input_ids(adata, **kwargs)]


def test_matches_per_cell_implementation(adata, vocab):
    encode(adata, vocab)
    assert sequences(adata) == [s.tolist() for s in expected_tokens(adata, vocab)]
    lengths = adata.obs["geneformer_n_tokens"].to_numpy()
    assert (lengths == [len(s) for s in expected_tokens(adata, vocab)]).all()
    assert adata.layers["geneformer_ranks"].dtype == np.int16
    assert adata.var["geneformer_token"].iloc[-2:].tolist() == [-1, -1]
    assert adata.uns["geneformer"]["params"]["vocabulary"] == vocab.version


def test_special_tokens_and_truncation(vocab):
    # One cell expressing every vocabulary gene with distinct values: truncated to the input size.
    n = vocab.max_genes + 50
    X = sp.csr_matrix(np.arange(1, n + 1, dtype=np.float32)[None, :])
    adata = ad.AnnData(X, var=pd.DataFrame(index=[fake_gene_id(i) for i in range(1, n + 1)]))
    encode(adata, vocab)
    (seq,) = sgf.pp.input_ids(adata)
    assert len(seq) == vocab.input_size
    if vocab.has_special_tokens:
        assert seq[0] == vocab.cls_id and seq[-1] == vocab.eos_id
    assert seq.tolist() == expected_tokens(adata, vocab)[0].tolist()
    assert adata.uns["geneformer"]["n_cells_truncated"] == 1


def test_identifier_forms_and_duplicates_are_summed(vocab_v2):
    ids = [fake_gene_id(1), fake_gene_id(1).lower(), fake_gene_id(2) + ".7", "gene3", "nan", None]
    X = sp.csr_matrix(np.array([[5, 7, 3, 1, 100, 100]], dtype=np.float32))
    adata = ad.AnnData(X, var=pd.DataFrame({"gene_id": ids}, index=[f"c{i}" for i in range(6)]))
    encode(adata, vocab_v2, gene_id_key="gene_id")
    assert adata.var["geneformer_token"].tolist() == [4, 4, 5, 6, -1, -1]
    # Columns 0 and 1 are summed into one token whose rank sits in the first column.
    ranks = adata.layers["geneformer_ranks"].toarray()[0]
    assert ranks[1] == 0 and ranks[0] > 0
    (seq,) = sgf.pp.input_ids(adata)
    med = vocab_v2.token_medians
    order = sorted([(12 / med[4], 4), (3 / med[5], 5), (1 / med[6], 6)], reverse=True)
    assert seq.tolist() == [2, *[t for _, t in order], 3]


def test_n_counts_and_filter(adata, vocab):
    adata.obs["total"] = np.asarray(adata.X.sum(axis=1)).ravel() * 3.0
    adata.obs["keep"] = np.arange(adata.n_obs) % 3 != 0
    encode(adata, vocab, n_counts_key="total", filter_key="keep")
    expected = expected_tokens(adata, vocab, n_counts=adata.obs["total"].to_numpy())
    got = sgf.pp.input_ids(adata)
    for i, keep in enumerate(adata.obs["keep"]):
        assert got[i].tolist() == (expected[i].tolist() if keep else [])
    assert adata.uns["geneformer"]["n_cells_filtered"] == adata.n_obs - adata.obs["keep"].sum()


def test_empty_cells_are_reported(vocab_v2):
    adata = make_counts(6, 50)
    X = adata.X.toarray()
    X[2, :50] = 0
    adata.X = sp.csr_matrix(X)
    with pytest.warns(UserWarning, match="1 cell expresses no vocabulary gene"):
        sgf.pp.rank_encode(adata, vocabulary=vocab_v2)
    assert adata.obs["geneformer_n_tokens"].iloc[2] == 0
    assert sgf.pp.input_ids(adata, [2])[0].size == 0


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (lambda a: a.X.data.__setitem__(0, -1), ValueError, "negative"),
        (lambda a: a.X.data.__setitem__(0, np.nan), ValueError, "NaN"),
        (lambda a: setattr(a, "X", sp.csr_matrix(np.log1p(a.X.toarray()))), ValueError, "log-normalized"),
        (lambda a: setattr(a, "X", a.X * 1.37), ValueError, "allow_non_integer"),
        (
            lambda a: (
                a.var_names.__setattr__("name", None) or setattr(a, "var_names", [f"x{i}" for i in range(a.n_vars)])
            ),
            ValueError,
            "None of the",
        ),
    ],
)
def test_bad_input_is_refused_before_any_change(adata, vocab_v2, mutate, error, match):
    mutate(adata)
    before = adata.copy()
    with pytest.raises(error, match=match):
        sgf.pp.rank_encode(adata, vocabulary=vocab_v2)
    assert set(adata.layers) == set(before.layers) and set(adata.obs) == set(before.obs)
    assert set(adata.var) == set(before.var) and set(adata.uns) == set(before.uns)


def test_missing_keys_and_views(adata, vocab_v2):
    with pytest.raises(KeyError, match="gene_id_key"):
        sgf.pp.rank_encode(adata, vocabulary=vocab_v2, gene_id_key="ensembl")
    with pytest.raises(KeyError, match="n_counts_key"):
        sgf.pp.rank_encode(adata, vocabulary=vocab_v2, n_counts_key="n_counts")
    with pytest.raises(KeyError, match="Layer"):
        sgf.pp.rank_encode(adata, vocabulary=vocab_v2, layer="counts")
    with pytest.raises(ValueError, match="view"):
        sgf.pp.rank_encode(adata[:5], vocabulary=vocab_v2)
    with pytest.raises(KeyError, match="not rank-encoded"):
        sgf.pp.input_ids(adata)


def test_non_integer_counts_allowed_on_request(adata, vocab_v2):
    adata.X = adata.X * 0.37
    encode(adata, vocab_v2, allow_non_integer=True)
    assert sequences(adata) == [s.tolist() for s in expected_tokens(adata, vocab_v2)]


def test_copy_leaves_input_untouched(adata, vocab_v2):
    X_before = adata.X.copy()
    out = encode(adata, vocab_v2, copy=True)
    assert "geneformer_ranks" not in adata.layers and "geneformer" not in adata.uns
    assert (adata.X != X_before).nnz == 0
    assert "geneformer_ranks" in out.layers


def test_chunking_threads_and_matrix_formats(adata, vocab_v2):
    encode(adata, vocab_v2)
    reference = sequences(adata)
    for kwargs, X in [
        ({"chunk_size": 7, "n_jobs": 1}, adata.X),
        ({"chunk_size": 4, "n_jobs": 2}, adata.X),
        ({}, adata.X.toarray()),
        ({"chunk_size": 5}, sp.csc_matrix(adata.X)),
    ]:
        other = ad.AnnData(X, obs=adata.obs[[]], var=adata.var[[]])
        encode(other, vocab_v2, **kwargs)
        assert sequences(other) == reference


def test_dask_backed_matrix(adata, vocab_v2):
    da = pytest.importorskip("dask.array")
    encode(adata, vocab_v2)
    lazy = ad.AnnData(da.from_array(adata.X, chunks=(8, adata.n_vars)), obs=adata.obs[[]], var=adata.var[[]])
    encode(lazy, vocab_v2, chunk_size=8)
    assert sequences(lazy) == sequences(adata)


@pytest.mark.parametrize("mode", ["r", "r+"])
def test_backed_file(adata, vocab_v2, tmp_path, mode):
    encode(adata, vocab_v2)
    path = tmp_path / "counts.h5ad"
    ad.AnnData(adata.X, obs=adata.obs[[]], var=adata.var[[]]).write_h5ad(path)
    backed = ad.read_h5ad(path, backed=mode)
    encode(backed, vocab_v2, chunk_size=6)
    assert sequences(backed) == sequences(adata)
    if mode == "r+":
        # The rank layer was streamed into the file and stays on disk.
        assert not sp.issparse(backed.layers["geneformer_ranks"])
        backed.file.close()
        reread = ad.read_h5ad(path)
        np.testing.assert_array_equal(
            reread.layers["geneformer_ranks"].toarray(), adata.layers["geneformer_ranks"].toarray()
        )


def test_survives_h5ad_and_cell_subsetting(adata, vocab_v2, tmp_path):
    encode(adata, vocab_v2)
    full = sequences(adata)
    adata.write_h5ad(tmp_path / "enc.h5ad")
    reread = ad.read_h5ad(tmp_path / "enc.h5ad")
    assert sequences(reread) == full
    subset = reread[[5, 1, 9]].copy()
    assert sequences(subset) == [full[5], full[1], full[9]]
    assert [s.tolist() for s in sgf.pp.input_ids(reread, [9, 1])] == [full[9], full[1]]
    # Dropping genes outside the vocabulary keeps the encoding valid; dropping a ranked gene does not.
    in_vocab = reread[:, reread.var["geneformer_token"] >= 0].copy()
    assert sequences(in_vocab) == full
    with pytest.raises(ValueError, match="Re-run"):
        sgf.pp.input_ids(reread[:, 1:].copy())


def test_mudata(adata, vocab_v2):
    mdata = md.MuData({"rna": adata, "prot": ad.AnnData(np.ones((adata.n_obs, 3)), obs=adata.obs[[]])})
    encode(mdata, vocab_v2)
    assert "geneformer_ranks" in mdata.mod["rna"].layers
    assert sequences(mdata) == sequences(mdata.mod["rna"])
    with pytest.raises(KeyError, match="modality"):
        sgf.pp.rank_encode(mdata, vocabulary=vocab_v2, mod="atac")


def test_storage_grows_with_expressed_genes_not_input_size(vocab_v2):
    adata = make_counts(40, 200, density=0.05)
    encode(adata, vocab_v2)
    ranks = adata.layers["geneformer_ranks"]
    assert ranks.nnz == (adata.obs["geneformer_n_tokens"].to_numpy() - 2).clip(0).sum()
    assert ranks.nnz < 0.1 * adata.n_obs * vocab_v2.input_size


def test_quirks_v1_keeps_duplicate_tokens():
    vocab = make_vocabulary("V1")
    X = sp.csr_matrix(np.array([[4, 4, 1]], dtype=np.float32))
    adata = ad.AnnData(X, var=pd.DataFrame(index=[fake_gene_id(1), fake_gene_id(1), fake_gene_id(2)]))
    encode(adata, vocab, reference_quirks=True)
    (seq,) = sgf.pp.input_ids(adata)
    assert sorted(seq.tolist()) == [2, 2, 3]  # the duplicated gene appears twice, unsummed
    encode(adata, vocab)
    (seq,) = sgf.pp.input_ids(adata)
    assert sorted(seq.tolist()) == [2, 3]


def test_data_subset_to_highly_variable_genes_is_refused(adata, vocab_v2):
    full = adata.copy()
    subset = adata[:, :120].copy()
    subset.var["highly_variable"] = True  # what `sc.pp.highly_variable_genes(..., subset=True)` leaves
    subset.uns["hvg"] = {"flavor": "seurat_v3"}
    with pytest.raises(ValueError, match="highly variable genes.*allow_gene_subset=True"):
        sgf.pp.rank_encode(subset, vocabulary=vocab_v2)
    assert "geneformer" not in subset.uns and "geneformer_ranks" not in subset.layers  # refused before any work
    subset.raw = full
    with pytest.raises(ValueError, match=r"`adata.raw` holds 302 genes: encode `adata.raw.to_adata\(\)`"):
        sgf.pp.rank_encode(subset, vocabulary=vocab_v2)
    encode(subset, vocab_v2, allow_gene_subset=True)  # a targeted panel: on request
    assert "geneformer_ranks" in subset.layers
    full.var["highly_variable"] = np.arange(full.n_vars) % 2 == 0  # flags without subsetting: fine
    encode(full, vocab_v2)
