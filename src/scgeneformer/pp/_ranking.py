"""Vectorised rank-value encoding of one chunk of cells (the numerical core of :func:`~scgeneformer.pp.rank_encode`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ._gene_plan import GenePlan

TARGET_SUM = 10_000.0
# Rows sorted together in one padded 2-D argsort; rows are bucketed by length so padding stays small.
_ROWS_PER_SORT = 64


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
    code = plan.column_code[chunk.indices]
    first = _compact(chunk, code >= 0, code, shape)
    if plan.needs_sum:
        duplicate = code <= -2
        if duplicate.any():
            extra = _compact(chunk, duplicate, -2 - code, shape)
            extra.sum_duplicates()
            first = first + extra
    return first


def _compact(chunk: sp.csr_matrix, keep: np.ndarray, group: np.ndarray, shape) -> sp.csr_matrix:
    kept = np.flatnonzero(keep)
    # Row boundaries of the kept entries (a binary search per row is far cheaper than a cumsum over entries).
    indptr = np.searchsorted(kept, chunk.indptr)
    return sp.csr_matrix((chunk.data[kept], group[kept], indptr), shape=shape)


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

    Rows are bucketed by length into blocks of ``_ROWS_PER_SORT`` rows, padded to the block's longest row and sorted
    with one ``argsort(axis=1)`` per block: small cache-resident sorts without a Python call per cell. All blocks
    share one flat buffer so the scatter and gather are single vectorised operations. Exact ties are rare; they are
    detected per block and re-ordered by tie key.
    """
    n_rows = len(indptr) - 1
    lengths = np.diff(indptr)
    rows_by_length = np.argsort(lengths, kind="stable")
    sorted_lengths = lengths[rows_by_length]
    block_first = np.arange(0, n_rows, _ROWS_PER_SORT)
    block_width = sorted_lengths[np.minimum(block_first + _ROWS_PER_SORT, n_rows) - 1]
    block_rows = np.minimum(_ROWS_PER_SORT, n_rows - block_first)
    block_offset = np.concatenate([[0], np.cumsum(block_rows * block_width)])
    # Where each row starts in the flat buffer, indexed by original row.
    position_in_order = np.arange(n_rows)
    row_base = np.empty(n_rows, dtype=np.int64)
    row_base[rows_by_length] = (
        block_offset[:-1][position_in_order // _ROWS_PER_SORT]
        + (position_in_order % _ROWS_PER_SORT) * block_width[position_in_order // _ROWS_PER_SORT]
    )
    entry_position = np.arange(len(values)) + np.repeat(row_base - indptr[:-1], lengths)
    buffer = np.full(block_offset[-1], np.inf)
    buffer[entry_position] = -values
    ranks = np.empty(block_offset[-1], dtype=np.int64)
    for block, width in enumerate(block_width.tolist()):
        if width == 0:
            continue
        span = slice(block_offset[block], block_offset[block + 1])
        block_values = buffer[span].reshape(-1, width)
        order = np.argsort(block_values, axis=1)
        ordered = np.take_along_axis(block_values, order, axis=1)
        tied = ordered[:, 1:] == ordered[:, :-1]
        if tied.any():
            tied &= np.isfinite(ordered[:, 1:])
            if tied.any():
                _order_ties(order, tied, tie_key, entry_position - block_offset[block], width)
        np.put_along_axis(ranks[span].reshape(-1, width), order, np.arange(width)[None, :], axis=1)
    return ranks[entry_position]


def _order_ties(order: np.ndarray, tied: np.ndarray, tie_key: np.ndarray, position_in_block, width: int) -> None:
    """Within each run of equal values of a sorted block, order the entries by ascending tie key."""
    key = np.zeros(order.size, dtype=np.int64)
    inside = (position_in_block >= 0) & (position_in_block < order.size)
    key[position_in_block[inside]] = tie_key[inside]
    key = key.reshape(order.shape)
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
