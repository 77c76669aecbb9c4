"""Vectorised rank-value encoding of one chunk of cells (the numerical core of :func:`~scgeneformer.pp.rank_encode`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ._gene_plan import GenePlan

TARGET_SUM = 10_000.0
# Rows sorted together in one padded 2-D argsort; rows are bucketed by length so padding stays small.
_ROWS_PER_SORT = 128


@dataclass
class RankedChunk:
    """Result for one chunk, on the sparsity structure of the group-indexed counts."""

    grouped: sp.csr_matrix  # counts re-indexed by group (sorted indices), zeros removed
    rank: np.ndarray  # 0-based rank of each stored entry within its cell
    n_genes_untruncated: np.ndarray  # expressed vocabulary genes per cell before truncation
    counts_in_vocabulary: float  # total counts of the chunk in vocabulary columns


def to_groups(chunk: sp.csr_matrix, plan: GenePlan) -> sp.csr_matrix:
    """Restrict a CSR chunk to vocabulary columns, re-indexed by group, duplicated genes summed.

    Columns that are the first of their group map monotonically onto groups, so they keep sorted indices; the few
    duplicate columns are summed in through scipy's linear-time sparse addition.
    """
    if not chunk.has_sorted_indices:
        chunk = chunk.sorted_indices()
    shape = (chunk.shape[0], plan.n_groups)
    first = _select_columns(chunk, plan.is_first_column, plan.var_group, shape)
    if not plan.needs_sum:
        return first
    duplicate = (plan.var_group >= 0) & ~plan.is_first_column
    extra = _select_columns(chunk, duplicate, plan.var_group, shape)
    if extra.nnz:
        extra.sum_duplicates()
        first = first + extra
    return first


def _select_columns(chunk: sp.csr_matrix, keep_column: np.ndarray, column_map: np.ndarray, shape) -> sp.csr_matrix:
    keep = keep_column[chunk.indices]
    kept_before = np.concatenate([[0], np.cumsum(keep)])
    indptr = kept_before[chunk.indptr]
    return sp.csr_matrix((chunk.data[keep], column_map[chunk.indices[keep]], indptr), shape=shape)


def normalize(grouped: sp.csr_matrix, n_counts: np.ndarray, plan: GenePlan, *, reference_quirks: bool) -> np.ndarray:
    """Median-scaled values ``count / n_counts * 10,000 / median`` of the stored entries, as float64.

    The default computes in float64. With ``reference_quirks`` the reference's dtype chain is reproduced: scipy
    divides a sparse matrix by multiplying with the reciprocal, in the promoted dtype of the counts and
    ``n_counts`` (float32 when both are float32), before the float64 division by the median.
    """
    rows = np.repeat(np.arange(grouped.shape[0]), np.diff(grouped.indptr))
    if reference_quirks:
        with np.errstate(divide="ignore"):  # cells with n_counts 0 have no entries here
            reciprocal = (1 / n_counts).astype(n_counts.dtype if n_counts.dtype.kind == "f" else np.float64)
        dtype = np.result_type(grouped.data.dtype, reciprocal.dtype)
        scaled = (grouped.data.astype(dtype) * reciprocal[rows].astype(dtype)) * dtype.type(TARGET_SUM)
        return scaled.astype(np.float64) * (1 / plan.group_median)[grouped.indices]
    with np.errstate(divide="ignore", invalid="ignore"):
        cell_scale = TARGET_SUM / n_counts.astype(np.float64)
    return grouped.data * cell_scale[rows] / plan.group_median[grouped.indices]


def rank_rows(values: np.ndarray, indptr: np.ndarray, tie_key: np.ndarray) -> np.ndarray:
    """0-based rank of each entry within its row by descending value; exact ties rank by ascending ``tie_key``.

    Rows of similar length are padded into small 2-D blocks and sorted with one ``argsort(axis=1)`` each, which
    avoids a Python call per cell. Exact ties are rare; they are detected per block and re-ordered by tie key.
    """
    lengths = np.diff(indptr)
    rows_by_length = np.argsort(lengths, kind="stable")
    sorted_lengths = lengths[rows_by_length]
    # Entries listed row after row in length order: their position within the row and in ``values``.
    ends = np.cumsum(sorted_lengths)
    column = np.arange(len(values)) - np.repeat(ends - sorted_lengths, sorted_lengths)
    source = np.repeat(indptr[:-1][rows_by_length], sorted_lengths) + column
    rank = np.empty(len(values), dtype=np.int64)
    for first_row in range(0, len(lengths), _ROWS_PER_SORT):
        last_row = min(first_row + _ROWS_PER_SORT, len(lengths))
        width = int(sorted_lengths[last_row - 1])
        if width == 0:
            continue
        lo, hi = ends[first_row] - sorted_lengths[first_row], ends[last_row - 1]
        n_rows = last_row - first_row
        block_row = np.repeat(np.arange(n_rows), sorted_lengths[first_row:last_row])
        block_column = column[lo:hi]
        flat = block_row * width + block_column
        block = np.full(n_rows * width, np.inf)
        block[flat] = -values[source[lo:hi]]
        block = block.reshape(n_rows, width)
        order = np.argsort(block, axis=1)
        ordered = np.take_along_axis(block, order, axis=1)
        tied = (ordered[:, 1:] == ordered[:, :-1]) & np.isfinite(ordered[:, 1:])
        if tied.any():
            _order_ties(order, tied, tie_key[source[lo:hi]], block_row, block_column)
        # The entry at sorted position j of a row sits at column order[row, j] of the block.
        block_start = indptr[:-1][rows_by_length[first_row:last_row]]
        rank[block_start[block_row] + order.ravel()[flat]] = block_column
    return rank


def _order_ties(order: np.ndarray, tied: np.ndarray, entry_tie_key: np.ndarray, block_row, block_column) -> None:
    """Within each run of equal values of a sorted block, order the entries by ascending tie key."""
    key = np.zeros(order.shape, dtype=np.int64)
    key[block_row, block_column] = entry_tie_key
    for row in np.flatnonzero(tied.any(axis=1)):
        edges = np.diff(np.concatenate([[0], tied[row].view(np.int8), [0]]))
        for run_start, run_stop in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) + 1, strict=True):
            run = order[row, run_start:run_stop]
            order[row, run_start:run_stop] = run[np.argsort(key[row, run], kind="stable")]


def rank_chunk(chunk: sp.csr_matrix, n_counts: np.ndarray, plan: GenePlan, *, reference_quirks: bool) -> RankedChunk:
    """Rank-value encode a CSR chunk: normalize, drop zeros and rank each cell's genes by descending value."""
    grouped = to_groups(chunk, plan)
    counts_in_vocabulary = float(grouped.data.sum(dtype=np.float64))
    values = normalize(grouped, n_counts, plan, reference_quirks=reference_quirks)
    grouped = sp.csr_matrix((values, grouped.indices, grouped.indptr), shape=grouped.shape)
    if not values.all():
        grouped.eliminate_zeros()
    indptr = grouped.indptr.astype(np.int64)
    rank = rank_rows(grouped.data, indptr, plan.group_tie_key[grouped.indices])
    return RankedChunk(grouped, rank, np.diff(indptr), counts_in_vocabulary)
