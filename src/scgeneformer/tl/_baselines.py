"""The standard baseline representation: PCA of log-normalised highly variable genes, computed from raw counts.

Shared by :func:`~scgeneformer.tl.benchmark_embeddings` (the baseline embedding) and
:func:`~scgeneformer.tl.baseline_classification_cv` (fitted on each fold's training cells). Nothing here writes
into the user's AnnData: the counts are copied into a normalised matrix of our own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._settings import logger

if TYPE_CHECKING:
    import scipy.sparse as sp
    from anndata import AnnData


def log_normalized(adata: AnnData, layer: str | None, cells: np.ndarray | None = None) -> sp.csr_matrix:
    """Counts of ``layer`` (``X`` if ``None``) of ``cells``, scaled to 10,000 per cell and log1p-transformed.

    As ``sc.pp.normalize_total(target_sum=1e4)`` then ``sc.pp.log1p``, into a new float32 CSR matrix.
    """
    import scipy.sparse as sp

    if layer is not None and layer not in adata.layers:
        msg = f"layer {layer!r} is not in .layers; available: {list(adata.layers)}."
        raise KeyError(msg)
    source = adata.X if layer is None else adata.layers[layer]
    if source is None:
        msg = "The AnnData has no X: give the raw counts with `layer=`."
        raise ValueError(msg)
    counts = source if cells is None else source[cells]
    counts = sp.csr_matrix(counts, dtype=np.float32, copy=True)
    where = "X" if layer is None else f"layers[{layer!r}]"
    if counts.nnz and counts.data.min() < 0:
        msg = f"{where} has negative values: give raw counts (e.g. `layer='counts'`)."
        raise ValueError(msg)
    if counts.nnz and not np.array_equal(counts.data[:10_000], np.round(counts.data[:10_000])):
        logger.warning(
            "%s does not look like raw counts (non-integer values); the baseline normalises it as counts. "
            "Give the raw counts with `layer=` if they are elsewhere.",
            where,
        )
    totals = np.asarray(counts.sum(1)).ravel()
    scale = np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0)
    counts = sp.diags(scale.astype(np.float32)) @ counts
    np.log1p(counts.data, out=counts.data)
    return sp.csr_matrix(counts)


def highly_variable(lognorm: sp.csr_matrix, rows: np.ndarray, n_top_genes: int = 2000) -> np.ndarray:
    """Positions of the ``n_top_genes`` most variable genes of ``rows``, as ``sc.pp.highly_variable_genes`` (Seurat)."""
    import anndata as ad
    import scanpy as sc

    n_top_genes = min(n_top_genes, lognorm.shape[1])
    table = sc.pp.highly_variable_genes(
        ad.AnnData(lognorm[rows]), n_top_genes=n_top_genes, flavor="seurat", inplace=False
    )
    return np.flatnonzero(table["highly_variable"].to_numpy())


def hvg_pca(
    lognorm: sp.csr_matrix, *, fit: np.ndarray | None = None, n_top_genes: int = 2000, n_comps: int = 50, seed: int = 0
) -> np.ndarray:
    """PCA of the highly variable genes of log-normalised data, fitted on the rows ``fit`` (all rows if ``None``).

    Genes are chosen as by ``sc.pp.highly_variable_genes(flavor="seurat", n_top_genes=...)`` and the components as
    by ``sc.pp.pca`` (zero-centred, ARPACK) on the fitting rows only; every row is then projected onto them, so that
    cells outside ``fit`` (e.g. a test fold) play no part in the fit.
    """
    import scanpy as sc

    rows = np.arange(lognorm.shape[0]) if fit is None else np.asarray(fit)
    genes = highly_variable(lognorm, rows, n_top_genes)
    n_comps = min(n_comps, len(rows) - 1, len(genes) - 1)
    if n_comps < 1:
        msg = f"Too few cells ({len(rows)}) or variable genes ({len(genes)}) for a PCA."
        raise ValueError(msg)
    train = lognorm[rows][:, genes]
    _, components, _, _ = sc.pp.pca(
        train, n_comps=n_comps, zero_center=True, svd_solver="arpack", random_state=seed, return_info=True
    )
    mean = np.asarray(train.mean(0)).ravel()
    embedding = np.asarray(lognorm[:, genes] @ components.T) - mean @ components.T
    return embedding.astype(np.float32)
