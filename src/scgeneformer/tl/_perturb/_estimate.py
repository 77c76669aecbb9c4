"""Stage 1 of a two-stage deletion screen: every single-gene deletion of a cell estimated from a few exact passes.

Deleting the gene at position ``i`` of a cell of ``n`` tokens leaves ``n - 1`` positions: position ``p`` holds the
original token ``p`` when ``p < i`` and token ``p + 1`` when ``p >= i``. An exact deletion at another position ``a``
("anchor") has the same token at the same position wherever both agree on that rule. With anchors ``a <= i < b`` (the
last, virtual, anchor being the original cell itself, whose first ``n - 1`` rows hold tokens ``p`` at positions
``p``), the hidden state of deletion ``i`` at position ``p`` is estimated by

- ``D_b[p]`` for ``a <= p < i`` (same token, same position; ``D_b`` is the deletion at ``b``),
- ``D_a[p]`` for ``i <= p < b`` (the same shifted token at the same position),
- ``(1 - w) D_a[p] + w D_b[p]`` elsewhere, where both agree, with ``w = (i - a) / (b - a)``.

What this leaves out is only *which* gene between ``a`` and ``b`` is missing (its effect on the context of the others);
the loss of the gene's own row and the one-position shift of every gene below it, which dominate the cell-embedding
shift of most deletions, are kept. Sums over positions of these estimates follow from prefix sums, for every ``i`` at
once in ``O(n d)`` per cell: the mean-pooled embedding (or the ``<cls>`` state, or the mean of per-gene cosines) of
every deletion, hence its cosine to the original and its shift toward each goal state. Anchor deletions are exact.

The cost is ``1 + n_anchors`` forward passes per cell instead of one per gene; all arithmetic after the encoder is in
float64, so estimates are deterministic and not quantised by float32 cosines (deletion shifts can be ~1e-7).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..._compute._batching import pad_sequences, plan_batches
from ._engine import ChunkResult
from ._jobs import CellJob, gene_positions, iter_sequences

if TYPE_CHECKING:
    from ..._data._encoding import EncodingInfo
    from ._engine import EngineSpec
    from ._spec import PerturbationSpec

#: Tokens of the sequences (originals and anchors) whose hidden states are held at once: bounds stage 1's memory.
GROUP_TOKENS = 1 << 18


def anchor_positions(first_gene: int, end_gene: int, n_anchors: int) -> np.ndarray:
    """``n_anchors`` deletion positions spread evenly over the gene positions ``[first_gene, end_gene)``.

    The first gene's position is always one; the original cell is the virtual anchor at ``end_gene``.
    """
    n_genes = end_gene - first_gene
    count = max(1, min(n_anchors, n_genes))
    return first_gene + np.unique(np.floor(np.arange(count) * n_genes / count).astype(np.int64))


class EstimateRunner:
    """Stage-1 estimates of one part of a screen (every single-gene deletion of its cells).

    Parameters
    ----------
    info
        The encoding of the data.
    selected
        Positions of the perturbed cells, in processing order; a part holds positions in ``selected``.
    spec
        The run's perturbation (single-gene deletions of every gene).
    max_len
        The model's input size.
    engine
        What the engine computes (layer, pooling, cell cosine, states); its token budget sizes the batches.
    n_anchors
        Exact anchor deletions per cell.
    """

    def __init__(
        self,
        info: EncodingInfo,
        selected: np.ndarray,
        spec: PerturbationSpec,
        max_len: int,
        engine: EngineSpec,
        n_anchors: int,
    ) -> None:
        self.info, self.selected, self.spec, self.max_len = info, selected, spec, max_len
        self.engine, self.n_anchors = engine, n_anchors

    def run(self, module: torch.nn.Module, part: np.ndarray, progress=None) -> tuple[ChunkResult, dict]:
        """Estimated cosines (float64) and state shifts of every deletion of the part's cells, and their labels."""
        # what stage 1 needs of each cell: its tokens and the positions of its genes (no deleted copies)
        special = self.info.has_special_tokens
        jobs = []
        for j, (cell, ids) in zip(part.tolist(), iter_sequences(self.info, self.selected[part]), strict=True):
            job = CellJob(cell, ids, deleted=gene_positions(len(ids), special).tolist())
            job.labels = [(int(ids[p]),) for p in job.deleted]
            jobs.append((j, job))
        labels = {j: job.labels for j, job in jobs}
        device = next(module.parameters()).device
        pieces = []
        group, tokens = [], 0
        for item in jobs:
            group.append(item)
            tokens += len(item[1].original) * (1 + self.n_anchors)
            if tokens >= GROUP_TOKENS:
                pieces.extend(self._estimate_group(module, group, device, progress))
                group, tokens = [], 0
        if group:
            pieces.extend(self._estimate_group(module, group, device, progress))
        return _concatenate(pieces, has_states=self.engine.states is not None), labels

    def _estimate_group(self, module, group: list[tuple[int, CellJob]], device, progress) -> list[tuple]:
        """Encode the originals and anchor deletions of a few cells in shared batches, then estimate each cell."""
        special = self.info.has_special_tokens
        sequences, owners = [], []
        for j, (_, job) in enumerate(group):
            ids = job.original
            first, end = (1, len(ids) - 1) if special else (0, len(ids))
            sequences.append(ids)
            owners.append((j, -1))
            for a in anchor_positions(first, end, self.n_anchors):
                sequences.append(np.delete(ids, a))
                owners.append((j, int(a)))
        lengths = np.array([len(s) for s in sequences])
        hidden: list[torch.Tensor | None] = [None] * len(sequences)
        for batch in plan_batches(lengths, token_budget=self.engine.token_budget):
            ids, mask = (t.to(device) for t in pad_sequences([sequences[s] for s in batch]))
            out = module.encode(ids, None if bool(mask.all()) else mask, self.engine.n_run)
            for row, s in enumerate(batch):
                hidden[s] = out[row, : lengths[s]].double().cpu()
        per_cell: dict[int, dict[int, torch.Tensor]] = {}
        for (j, a), h in zip(owners, hidden, strict=True):
            per_cell.setdefault(j, {})[a] = h
        pieces = []
        for j, (index, job) in enumerate(group):
            original = per_cell[j].pop(-1)
            anchors = np.array(sorted(per_cell[j]), dtype=np.int64)
            cosine, shifts = estimate_deletions(
                original, anchors, [per_cell[j][int(a)] for a in anchors], np.asarray(job.deleted), self.engine, special
            )
            pieces.append((index, np.arange(len(job.deleted)), cosine, shifts))
            if progress is not None:
                progress.update(len(job.deleted))
        return pieces


def estimate_deletions(
    original: torch.Tensor,
    anchors: np.ndarray,
    anchor_hidden: list[torch.Tensor],
    deleted: np.ndarray,
    engine: EngineSpec,
    special: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Estimated cosine and state shifts of deleting each position in ``deleted`` (see the module description).

    ``original``: hidden states of the cell (``n × d``, float64); ``anchor_hidden``: those of the exact deletions at
    ``anchors`` (``(n - 1) × d`` each, sorted positions, the first gene's position first).
    """
    n = original.shape[0]
    first, end = (1, n - 1) if special else (0, n)
    genes_after = torch.zeros(n - 1, dtype=torch.float64)  # gene positions of a deleted sequence
    genes_after[first : end - 1] = 1.0
    genes_before = torch.zeros(n, dtype=torch.float64)
    genes_before[first:end] = 1.0
    gene_mean = engine.cell_cosine == "gene_mean" and engine.pooling == "mean"
    if engine.pooling == "cls":
        pooled = original[0]
    else:
        pooled = (original * genes_before[:, None]).sum(0) / genes_before.sum()

    def pooled_features(hidden: torch.Tensor) -> torch.Tensor:
        """What each position contributes to the cell embedding (up to a constant factor)."""
        if engine.pooling == "cls":
            out = torch.zeros_like(hidden)
            out[0] = hidden[0]
            return out
        return hidden * genes_after[:, None]

    def cosine_features(hidden: torch.Tensor, anchor: int) -> torch.Tensor:
        """Each gene's cosine to the original gene it holds (``anchor = end``: the original cell)."""
        source = torch.arange(n - 1) + (torch.arange(n - 1) >= anchor).long()
        cos = torch.nn.functional.cosine_similarity(hidden, original[source], dim=-1)
        return (cos * genes_after)[:, None]

    bounds = np.concatenate([anchors, [end]])
    hidden = [*anchor_hidden, original[: n - 1]]
    cos = torch.nn.functional.cosine_similarity
    sums = _interpolated_sums([pooled_features(h) for h in hidden], bounds, deleted, n)
    if gene_mean:
        features = [cosine_features(h, int(a)) for h, a in zip(hidden, bounds, strict=True)]
        cosine = (_interpolated_sums(features, bounds, deleted, n)[:, 0] / genes_after.sum().clamp(min=1)).numpy()
    else:
        cosine = cos(sums, pooled[None], dim=-1).numpy()
    shifts = None
    if engine.states is not None:
        states = engine.states.double().cpu()
        shifts = (cos(sums[:, None, :], states[None], dim=-1) - cos(pooled[None, :], states, dim=-1)[None]).numpy()
    return cosine, shifts


def _interpolated_sums(sources: list[torch.Tensor], bounds: np.ndarray, deleted: np.ndarray, n: int) -> torch.Tensor:
    """Per deletion, the sum over its positions of the anchors' features as the module description combines them.

    ``sources[k]``: per-position features of the deletion at ``bounds[k]`` (the last: the original cell).
    """
    zero = torch.zeros((1, sources[0].shape[1]), dtype=torch.float64)
    prefix = [torch.cat([zero, f.cumsum(0)]) for f in sources]  # prefix[k][p]: sum of rows < p
    sums = torch.empty((len(deleted), sources[0].shape[1]), dtype=torch.float64)
    deleted_t = torch.as_tensor(deleted, dtype=torch.long)
    segment = np.searchsorted(bounds, deleted, side="right") - 1
    for k in np.unique(segment):
        rows = np.flatnonzero(segment == k)
        i = deleted_t[rows]
        a, b = int(bounds[k]), int(bounds[k + 1])
        left, right = prefix[k], prefix[k + 1]
        stop = min(b, n - 1)
        w = ((i - a).double() / (b - a))[:, None]
        both_left = left[a] + left[n - 1] - left[stop]  # positions < a and >= b, where both anchors agree
        both_right = right[a] + right[n - 1] - right[stop]
        sums[rows] = (1 - w) * both_left + w * both_right + (right[i] - right[a]) + (left[stop] - left[i])
    return sums


def _concatenate(pieces: list[tuple], *, has_states: bool) -> ChunkResult:
    if not pieces:
        empty = np.empty(0, dtype=np.int64)
        return ChunkResult(empty, empty, np.empty(0, dtype=np.float64), np.empty((0, 0)) if has_states else None)
    job = np.concatenate([np.full(len(k), index, dtype=np.int64) for index, k, _, _ in pieces])
    return ChunkResult(
        job=job,
        perturbation=np.concatenate([k for _, k, _, _ in pieces]),
        cosine=np.concatenate([c for _, _, c, _ in pieces]),
        shifts=np.concatenate([s for _, _, _, s in pieces]) if has_states else None,
    )
