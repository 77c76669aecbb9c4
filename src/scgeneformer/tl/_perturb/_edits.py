"""Token-sequence edits of in silico perturbation, and which original gene each perturbed position is compared with.

Every perturbation is expressed as an *order*: for each position of the perturbed sequence, the position in the
original sequence it comes from, or ``INSERTED`` for a token that was not in the cell. From the order follow the
perturbed token ids and the gene-by-gene comparison (``sources``): a perturbed position is compared with the
original position it came from, except the perturbed genes themselves and the special tokens.
"""

from __future__ import annotations

import numpy as np

#: ``order`` value of a token inserted by the perturbation.
INSERTED = -1
#: ``sources`` value: position not compared (perturbed gene, special token, padding).
NOT_COMPARED = -1
#: ``sources`` value: compared with a zero vector (cosine 0), as the reference does for a gene whose original
#: counterpart was cut off by its over-truncation (``reference_quirks=True`` only).
ZERO = -2


def gene_slice(length: int, special: bool) -> slice:
    """Positions of gene tokens in a sequence of ``length`` tokens (V2: without ``<cls>`` and ``<eos>``)."""
    return slice(1, length - 1) if special else slice(0, length)


def _finish(ids: np.ndarray, order: np.ndarray, inserted: np.ndarray | None, perturbed_positions, special: bool):
    """Perturbed ids and comparison sources from an order over the original positions."""
    safe = np.where(order >= 0, order, 0)
    perturbed = ids[safe].copy()
    if inserted is not None:
        perturbed[order == INSERTED] = inserted
    genes = np.zeros(len(ids), dtype=bool)
    genes[gene_slice(len(ids), special)] = True
    genes[list(perturbed_positions)] = False
    compared = (order >= 0) & genes[safe]
    sources = np.where(compared, order, NOT_COMPARED)
    return perturbed, sources


def delete(ids: np.ndarray, positions, special: bool):
    """Remove the genes at ``positions``."""
    order = np.delete(np.arange(len(ids)), list(positions))
    return _finish(ids, order, None, positions, special)


def mask(ids: np.ndarray, positions, mask_id: int, special: bool):
    """Replace the genes at ``positions`` with the ``<mask>`` token: every other gene keeps its position (and rank)."""
    order = np.arange(len(ids))
    perturbed, sources = _finish(ids, order, None, positions, special)
    perturbed[list(positions)] = mask_id
    return perturbed, sources


def move_to_front(ids: np.ndarray, positions, special: bool):
    """Move the genes at ``positions`` to the top ranks (after ``<cls>``), keeping their relative order."""
    front = 1 if special else 0
    positions = sorted(positions)
    rest = np.delete(np.arange(front, len(ids)), [p - front for p in positions])
    order = np.concatenate([np.arange(front), positions, rest]).astype(np.int64)
    return _finish(ids, order, None, positions, special)


def move_by(ids: np.ndarray, positions, shift: int, special: bool):
    """Move each gene at ``positions`` ``shift`` ranks down (``shift > 0``, inhibit) or up (``< 0``, activate).

    Genes are moved one after the other, in rank order, each to ``its rank + shift`` clipped to the cell's first
    and last gene ranks; the other genes keep their relative order.
    """
    gene_range = gene_slice(len(ids), special)
    first, last = gene_range.start, gene_range.stop - 1
    order = list(range(len(ids)))
    for position in sorted(positions, reverse=shift > 0):
        current = order.index(position)
        target = min(max(current + shift, first), last)
        order.insert(target, order.pop(current))
    return _finish(ids, np.asarray(order, dtype=np.int64), None, positions, special)


def overflow(length: int, n_present: int, n_tokens: int, max_len: int, *, reference_quirks: bool) -> int:
    """Genes pushed out of the input by inserting ``n_tokens - n_present`` new tokens into a cell.

    The reference computes it from the length *after* insertion and truncation, which counts the inserted tokens
    twice (a cell one gene short of the input size loses a gene it keeps); ``reference_quirks`` reproduces that.
    """
    added = n_tokens - n_present
    if reference_quirks:
        return min(length + added, max_len) + added - max_len
    return max(0, length + added - max_len)


def truncate(ids: np.ndarray, n_remove: int, special: bool) -> np.ndarray:
    """Drop the ``n_remove`` lowest-ranked genes (V2: keep ``<eos>`` last)."""
    if n_remove <= 0:
        return ids
    if special:
        return np.concatenate([ids[: len(ids) - n_remove - 1], ids[-1:]])
    return ids[: len(ids) - n_remove]


def overexpress_set(ids: np.ndarray, tokens: tuple[int, ...], max_len: int, special: bool, *, reference_quirks: bool):
    """Put ``tokens`` at the top ranks: move them there if present, insert them otherwise, truncate to the input size.

    Returns ``(original, perturbed, sources)``: the original is truncated by the same number of genes the
    insertion pushed out, so that the comparison models adding the genes, not losing the tail.
    """
    present = [int(np.flatnonzero(ids == t)[0]) for t in tokens if (ids == t).any()]
    n_overflow = overflow(len(ids), len(present), len(tokens), max_len, reference_quirks=reference_quirks)
    original = truncate(ids, n_overflow, special)
    front = 1 if special else 0
    kept = np.delete(np.arange(len(ids)), present)
    order = np.concatenate([np.arange(front), np.full(len(tokens), INSERTED), kept[front:]]).astype(np.int64)
    if len(order) > max_len:
        order = np.concatenate([order[: max_len - 1], order[-1:]]) if special else order[:max_len]
    inserted = np.asarray(tokens, dtype=ids.dtype)
    perturbed, sources = _finish(ids, order, inserted, present, special)
    # Positions past the truncated original have no counterpart: under the quirk they meet the zero padding.
    last_kept = len(original) - (1 if special else 0)
    sources = np.where(sources >= last_kept, ZERO, sources)
    return original, perturbed, sources
