"""Embeddings of the golden tiny checkpoints against the reference's (``../shared/golden/embeddings``).

By default a fixed subset of cells is compared (the 60 longest and 140 others, seeded) to keep the suite fast; set
``SGF_FULL_GOLDEN=1`` to compare all 2,700 cells.
"""

import os
import warnings

import anndata as ad
import numpy as np
import pytest
from helpers import shared_path

import scgeneformer as sgf

CASES = [
    ("V1", "cell", "mean", -1),
    ("V1", "cell", "mean", 0),
    ("V2", "cls", "cls", -1),
    ("V2", "cls", "cls", 0),
    ("V2", "cell", "mean", -1),
    ("V2", "cell", "mean", 0),
]


@pytest.fixture(scope="module")
def encoded():
    out = {}
    for version, folder in (("V1", "V1_gc30M"), ("V2", "V2_gc104M")):
        adata = ad.read_h5ad(shared_path("data", "datasets", "pbmc3k_annotated.h5ad"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            sgf.pp.rank_encode(
                adata,
                vocabulary=shared_path("data", "dictionaries", folder),
                gene_id_key="ensembl_id",
                n_counts_key="n_counts",
                reference_quirks=True,
            )
        if not os.environ.get("SGF_FULL_GOLDEN"):
            lengths = adata.obs["geneformer_n_tokens"].to_numpy()
            longest = np.argsort(-lengths)[:60]
            others = np.random.default_rng(0).choice(np.setdiff1d(np.arange(adata.n_obs), longest), 140, replace=False)
            adata = adata[np.sort(np.concatenate([longest, others]))].copy()
        out[version] = adata
    return out


def cosine(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize(("version", "mode", "pooling", "layer"), CASES)
def test_cell_embeddings_match_reference(encoded, version, mode, pooling, layer):
    adata = encoded[version]
    model = sgf.GeneformerModel.from_pretrained(shared_path("golden", "checkpoints", f"tiny_{version.lower()}"))
    sgf.tl.embed(adata, model, layer=layer, pooling=pooling)
    golden = np.load(
        shared_path("golden", "embeddings", f"embs_A_{version}_{mode}_layer{layer}.npz"), allow_pickle=True
    )
    rows = {name: i for i, name in enumerate(golden["obs_names"])}
    reference = golden["embs"][[rows[name] for name in adata.obs_names]]
    ours = adata.obsm["X_geneformer"]
    assert cosine(ours, reference).min() >= 0.99999
    assert np.abs(ours - reference).max() <= 1e-4


def test_gene_embeddings_match_reference():
    golden = np.load(shared_path("golden", "embeddings", "gene_embs_A_V1_gene_layer-1_50cells.npz"), allow_pickle=True)
    adata = ad.read_h5ad(shared_path("data", "datasets", "pbmc3k_annotated.h5ad"))
    adata = adata[adata.obs_names.isin(golden["cell_ids"])].copy()
    sgf.pp.rank_encode(
        adata,
        vocabulary=shared_path("data", "dictionaries", "V1_gc30M"),
        gene_id_key="ensembl_id",
        n_counts_key="n_counts",
        reference_quirks=True,
    )
    model = sgf.GeneformerModel.from_pretrained(shared_path("golden", "checkpoints", "tiny_v1"))
    sgf.tl.embed(adata, model, layer=-1, gene_embeddings=True)
    column = {gene: i for i, gene in enumerate(adata.var["ensembl_id"])}
    columns = [column[gene] for gene in golden["gene_ids"]]
    ours = adata.varm["geneformer_genes"][columns]
    assert (adata.var["geneformer_genes_n_cells"].to_numpy()[columns] == golden["n_cells_with_gene"]).all()
    assert (adata.var["geneformer_genes_n_cells"] > 0).sum() == len(golden["gene_ids"])
    assert cosine(ours, golden["embs"]).min() >= 0.99999
    assert np.abs(ours - golden["embs"]).max() <= 1e-4
