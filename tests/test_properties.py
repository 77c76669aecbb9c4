"""Property tests: the encoding of a cell depends only on its own counts, up to exact ties."""

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from helpers import fake_gene_id, make_vocabulary
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import scgeneformer as sgf

VOCABS = {v: make_vocabulary(v) for v in ("V1", "V2")}
N_GENES = 40


def encode(X, var_names, version, **kwargs):
    adata = ad.AnnData(sp.csr_matrix(X), var=pd.DataFrame(index=var_names))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sgf.pp.rank_encode(adata, vocabulary=VOCABS[version], **kwargs)
    return sgf.pp.input_ids(adata)


def assert_same_up_to_ties(a, b, value_of_token):
    """Equal sequences, except that tokens with equal values may trade places."""
    assert len(a) == len(b)
    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        if x != y:
            assert np.isclose(value_of_token[x], value_of_token[y], rtol=1e-12, atol=0)


counts = arrays(np.int64, (6, N_GENES), elements=st.integers(0, 30))
genes = [fake_gene_id(i) for i in range(1, N_GENES + 1)]


def cell_values(X_row, version):
    medians = VOCABS[version].token_medians
    tokens = VOCABS[version].map_gene_ids(genes)
    values = np.full(len(medians), np.nan)
    values[tokens] = X_row / medians[tokens]  # scale-free: n_counts and 10,000 are constant within a cell
    return values


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(X=counts, version=st.sampled_from(["V1", "V2"]), seed=st.integers(0, 2**16))
def test_gene_and_cell_permutations(X, version, seed):
    rng = np.random.default_rng(seed)
    X[:, 0] += 1  # no empty cells
    base = encode(X, genes, version)
    gene_order = rng.permutation(N_GENES)
    permuted_genes = encode(X[:, gene_order], [genes[i] for i in gene_order], version)
    cell_order = rng.permutation(X.shape[0])
    permuted_cells = encode(X[cell_order], genes, version)
    for i in range(X.shape[0]):
        # Default ties are broken by token id, so even tied genes keep their order under gene permutations.
        assert permuted_genes[i].tolist() == base[i].tolist()
        assert permuted_cells[np.flatnonzero(cell_order == i)[0]].tolist() == base[i].tolist()


@settings(max_examples=40, deadline=None)
@given(X=counts, version=st.sampled_from(["V1", "V2"]), factor=st.integers(2, 1000))
def test_scaling_a_cell_keeps_its_tokens(X, version, factor):
    X[:, 0] += 1
    base = encode(X, genes, version)
    scaled = X.copy()
    scaled[0] *= factor
    result = encode(scaled, genes, version)
    assert_same_up_to_ties(result[0], base[0], cell_values(X[0], version))
    for i in range(1, X.shape[0]):
        assert result[i].tolist() == base[i].tolist()
