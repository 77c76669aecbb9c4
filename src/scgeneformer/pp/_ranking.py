"""Vectorised rank-value encoding of one chunk of cells (the numerical core of :func:`~scgeneformer.pp.rank_encode`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ._gene_plan import GenePlan

TARGET_SUM = 10_000.0


@dataclass
class RankedChunk:
    """Result for one chunk: the kept genes of each cell in rank order."""

    indptr: np.ndarray  # per-cell offsets into ``group``
    group: np.ndarray  # group (token unit) of each kept gene, in rank order
    n_genes_untruncated: np.ndarray  # expressed vocabulary genes per cell before truncation
    counts_in_vocabulary: float  # total counts of the chunk in vocabulary columns


def to_groups(chunk: sp.csr_matrix, plan: GenePlan) -> tuple[sp.csr_matrix, float]:
    """Restrict a CSR chunk to vocabulary columns and re-index them by group, summing duplicated genes."""
    group_of_entry = plan.var_group[chunk.indices]
    keep = group_of_entry >= 0
    row_nnz = np.add.reduceat(keep, chunk.indptr[:-1]) if chunk.nnz else np.zeros(chunk.shape[0], dtype=np.int64)
    row_nnz[np.diff(chunk.indptr) == 0] = 0  # reduceat repeats the next value for empty rows
    indptr = np.concatenate([[0], np.cumsum(row_nnz)])
    grouped = sp.csr_matrix((chunk.data[keep], group_of_entry[keep], indptr), shape=(chunk.shape[0], plan.n_groups))
    if plan.needs_sum:
        grouped.sum_duplicates()
    return grouped, float(grouped.data.sum(dtype=np.float64))


def normalize(grouped: sp.csr_matrix, n_counts: np.ndarray, plan: GenePlan, *, reference_quirks: bool) -> np.ndarray:
    """Median-scaled values ``count / n_counts * 10,000 / median`` of the stored entries, as float64.

    The default computes in float64. With ``reference_quirks`` the reference's dtype chain is reproduced: scipy
    divides a sparse matrix by multiplying with the reciprocal, in the promoted dtype of the counts and
    ``n_counts`` (float32 when both are float32), before the float64 division by the median.
    """
    rows = np.repeat(np.arange(grouped.shape[0]), np.diff(grouped.indptr))
    if reference_quirks:
        reciprocal = (1 / n_counts).astype(n_counts.dtype if n_counts.dtype.kind == "f" else np.float64)
        dtype = np.result_type(grouped.data.dtype, reciprocal.dtype)
        scaled = (grouped.data.astype(dtype) * reciprocal[rows].astype(dtype)) * dtype.type(TARGET_SUM)
        return scaled.astype(np.float64) * (1 / plan.group_median)[grouped.indices]
    n = n_counts.astype(np.float64)
    return grouped.data.astype(np.float64) / n[rows] * TARGET_SUM / plan.group_median[grouped.indices]


def rank_rows(values: np.ndarray, indptr: np.ndarray, tie_key: np.ndarray) -> np.ndarray:
    """Order of the entries of each row by descending value; exact ties are ordered by ascending ``tie_key``.

    Small per-row sorts are several times faster than one global sort (cache-resident, SIMD quicksort), and exact
    ties are rare, so they are detected afterwards and fixed with a stable sort on the tie key.
    """
    negative = -values
    order = np.arange(len(values))
    starts, stops = indptr[:-1].tolist(), indptr[1:].tolist()
    for start, stop in zip(starts, stops, strict=True):
        if stop - start > 1:
            order[start:stop] = start + np.argsort(negative[start:stop])
    ordered = values[order]
    tied = ordered[1:] == ordered[:-1]
    row_starts = indptr[1:-1]
    tied[row_starts[(row_starts > 0) & (row_starts < len(values))] - 1] = False
    if tied.any():
        edges = np.diff(np.concatenate([[0], tied.view(np.int8), [0]]))
        for run_start, run_stop in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) + 1, strict=True):
            run = order[run_start:run_stop]
            order[run_start:run_stop] = run[np.argsort(tie_key[run], kind="stable")]
    return order


def rank_chunk(
    chunk: sp.csr_matrix,
    n_counts: np.ndarray,
    plan: GenePlan,
    *,
    max_genes: int,
    reference_quirks: bool,
) -> RankedChunk:
    """Rank-value encode a CSR chunk: normalize, drop zeros, sort descending, truncate to ``max_genes``."""
    grouped, counts_in_vocabulary = to_groups(chunk, plan)
    values = normalize(grouped, n_counts, plan, reference_quirks=reference_quirks)
    nonzero = values != 0
    if not nonzero.all():
        grouped = sp.csr_matrix((values, grouped.indices, grouped.indptr), shape=grouped.shape)
        grouped.eliminate_zeros()
        values = grouped.data
    indptr = grouped.indptr.astype(np.int64)
    # Group numbers are the tie order (token id by default, the reference's column order with quirks).
    order = rank_rows(values, indptr, grouped.indices)
    n_genes = np.diff(indptr)
    position = np.arange(len(order)) - np.repeat(indptr[:-1], n_genes)
    kept = position < max_genes
    kept_per_row = np.minimum(n_genes, max_genes)
    return RankedChunk(
        indptr=np.concatenate([[0], np.cumsum(kept_per_row)]),
        group=grouped.indices[order[kept]],
        n_genes_untruncated=n_genes,
        counts_in_vocabulary=counts_in_vocabulary,
    )
