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
from ._edits import move_to_front
from ._engine import ChunkResult
from ._jobs import ScreenTargets, iter_sequences, screen_targets

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


def overexpression_anchors(first_gene: int, end_gene: int, n_anchors: int) -> np.ndarray:
    """``n_anchors`` positions to move to the top, spread evenly over ``(first_gene, end_gene)``.

    The last gene's position is always one; the original cell is the virtual anchor at ``first_gene`` (moving the
    top gene to the top changes nothing).
    """
    n_movable = end_gene - first_gene - 1
    if n_movable < 1:
        return np.empty(0, dtype=np.int64)
    count = min(n_anchors, n_movable)
    return first_gene + np.unique(np.ceil(np.arange(1, count + 1) * n_movable / count).astype(np.int64))


class EstimateRunner:
    """Stage-1 estimates of one part of a screen (every single-gene perturbation of its cells).

    Parameters
    ----------
    info
        The encoding of the data.
    selected
        Positions of the perturbed cells, in processing order; a part holds positions in ``selected``.
    spec
        The run's perturbation (single-gene deletions or overexpressions: every gene, or a list ``separately``).
    max_len
        The model's input size.
    engine
        What the engine computes (layer, pooling, cell cosine, states); its token budget sizes the batches.
    n_anchors
        Exact anchor perturbations per cell.
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
        """Estimated cosines (float64) and state shifts of every perturbation of the part's cells, and their labels.

        A listed gene a cell lacks (inserted by overexpression) has no estimate: its values are NaN.
        """
        # what stage 1 needs of each cell: the original and its perturbed genes' positions (no perturbed copies)
        special = self.info.has_special_tokens
        cells = [
            (j, screen_targets(ids, self.spec, self.max_len, special))
            for j, (_, ids) in zip(part.tolist(), iter_sequences(self.info, self.selected[part]), strict=True)
        ]
        labels = {j: targets.labels for j, targets in cells}
        device = next(module.parameters()).device
        pieces = []
        group, tokens = [], 0
        for item in cells:
            group.append(item)
            tokens += len(item[1].original) * (1 + self.n_anchors)
            if tokens >= GROUP_TOKENS:
                pieces.extend(self._estimate_group(module, group, device, progress))
                group, tokens = [], 0
        if group:
            pieces.extend(self._estimate_group(module, group, device, progress))
        return _concatenate(pieces, has_states=self.engine.states is not None), labels

    def _anchors(self, ids: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """The anchor positions of a cell and their exact perturbed sequences."""
        special = self.info.has_special_tokens
        first, end = (1, len(ids) - 1) if special else (0, len(ids))
        if self.spec.perturbation == "delete":
            anchors = anchor_positions(first, end, self.n_anchors)
            return anchors, [np.delete(ids, a) for a in anchors]
        anchors = overexpression_anchors(first, end, self.n_anchors)
        return anchors, [move_to_front(ids, [int(a)], special)[0] for a in anchors]

    def _estimate_group(self, module, group: list[tuple[int, ScreenTargets]], device, progress) -> list[tuple]:
        """Encode the originals and anchors of a few cells in shared batches, then estimate each cell."""
        special = self.info.has_special_tokens
        estimate = estimate_deletions if self.spec.perturbation == "delete" else estimate_overexpressions
        sequences, owners = [], []
        for j, (_, targets) in enumerate(group):
            sequences.append(targets.original)
            owners.append((j, -1))
            anchors, perturbed = self._anchors(targets.original)
            sequences.extend(perturbed)
            owners.extend((j, int(a)) for a in anchors)
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
        n_states = 0 if self.engine.states is None else len(self.engine.states)
        pieces = []
        for j, (index, targets) in enumerate(group):
            original = per_cell[j].pop(-1)
            anchors = np.array(sorted(per_cell[j]), dtype=np.int64)
            present = targets.positions >= 0
            cosine = np.full(len(present), np.nan)
            shifts = np.full((len(present), n_states), np.nan) if n_states else None
            if present.any():
                cos_present, shifts_present = estimate(
                    original,
                    anchors,
                    [per_cell[j][int(a)] for a in anchors],
                    targets.positions[present],
                    self.engine,
                    special,
                )
                cosine[present] = cos_present
                if shifts is not None:
                    shifts[present] = shifts_present
            pieces.append((index, np.arange(len(present)), cosine, shifts))
            if progress is not None:
                progress.update(len(present))
        return pieces


class _Embedding:
    """How a cell embedding is read from hidden states: per-position weights of its pooling, and the original's."""

    def __init__(self, original: torch.Tensor, engine: EngineSpec, special: bool) -> None:
        n = original.shape[0]
        self.n, self.original = n, original
        self.first, self.end = (1, n - 1) if special else (0, n)
        self.gene_mean = engine.cell_cosine == "gene_mean" and engine.pooling == "mean"
        self.cls = engine.pooling == "cls"
        self.pooled = original[0] if self.cls else original[self.first : self.end].mean(0)

    def weights(self, length: int, end: int) -> torch.Tensor:
        """Per-position weights of the pooled embedding of a sequence of ``length`` tokens, genes ending at ``end``."""
        weights = torch.zeros(length, dtype=torch.float64)
        if self.cls:
            weights[0] = 1.0
        else:
            weights[self.first : end] = 1.0
        return weights

    def gene_cosines(self, hidden: torch.Tensor, source: torch.Tensor, compared: torch.Tensor) -> torch.Tensor:
        """Each compared position's cosine to the original position ``source`` it holds, as a one-column feature."""
        cos = torch.nn.functional.cosine_similarity(hidden, self.original[source], dim=-1)
        return (cos * compared)[:, None]

    def results(self, sums: torch.Tensor, cosine: torch.Tensor | None, engine: EngineSpec):
        """Cosine to the original (or the given mean gene cosine) and state shifts of estimated pooled sums."""
        cos = torch.nn.functional.cosine_similarity
        if cosine is None:
            cosine = cos(sums, self.pooled[None], dim=-1)
        shifts = None
        if engine.states is not None:
            states = engine.states.double().cpu()
            shifts = cos(sums[:, None, :], states[None], dim=-1) - cos(self.pooled[None, :], states, dim=-1)[None]
            shifts = shifts.numpy()
        return cosine.numpy(), shifts


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
    embedding = _Embedding(original, engine, special)
    n, end = embedding.n, embedding.end
    weights = embedding.weights(n - 1, end - 1)  # gene positions of a deleted sequence
    bounds = np.concatenate([anchors, [end]])
    hidden = [*anchor_hidden, original[: n - 1]]
    sums = _deletion_sums([h * weights[:, None] for h in hidden], bounds, deleted, n)
    cosine = None
    if embedding.gene_mean:
        compared = torch.zeros(n - 1, dtype=torch.float64)
        compared[embedding.first : end - 1] = 1.0
        positions = torch.arange(n - 1)
        features = [
            embedding.gene_cosines(h, positions + (positions >= int(a)).long(), compared)
            for h, a in zip(hidden, bounds, strict=True)
        ]
        cosine = _deletion_sums(features, bounds, deleted, n)[:, 0] / compared.sum().clamp(min=1)
    return embedding.results(sums, cosine, engine)


def estimate_overexpressions(
    original: torch.Tensor,
    anchors: np.ndarray,
    anchor_hidden: list[torch.Tensor],
    moved: np.ndarray,
    engine: EngineSpec,
    special: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Estimated cosine and state shifts of moving each gene position in ``moved`` to the top.

    Moving the gene at ``i`` to the top position ``f`` shifts the genes at ``f .. i - 1`` one position down and
    leaves the others in place, the mirror image of a deletion. With anchors ``a < i <= b`` (exact moves; the
    original cell is the virtual anchor at the first gene), position ``p`` of move ``i`` is estimated by ``M_b[p]``
    for ``a < p <= i`` and by ``M_a[p]`` for ``i < p <= b`` (same token, same position), and by the rank-weighted mix
    ``(1 - w) M_a[p] + w M_b[p]``, ``w = (i - a) / (b - a)``, where both agree. The moved gene itself, at ``f``, is its
    original state plus the mean of what moving to the top did to the anchors' genes. ``original``: hidden states of
    the cell (``n × d``, float64); ``anchor_hidden``: those of the exact moves at ``anchors`` (sorted; the last gene's
    position last).
    """
    embedding = _Embedding(original, engine, special)
    n, front = embedding.n, embedding.first
    weights = embedding.weights(n, embedding.end)
    at_top = weights[front].clone()
    weights[front] = 0.0  # the moved gene's row is estimated on its own
    bounds = np.concatenate([[front], anchors])
    hidden = [original, *anchor_hidden]
    sums = _overexpression_sums([h * weights[:, None] for h in hidden], bounds, moved, n)
    # what moving to the top did to the anchors' own genes, on average (measured: steadier than the neighbours')
    lift = torch.stack([h[front] - original[int(a)] for h, a in zip(anchor_hidden, anchors, strict=True)]).mean(0)
    top_row = original[torch.as_tensor(moved, dtype=torch.long)] + lift
    sums = sums + at_top * top_row
    cosine = None
    if embedding.gene_mean:
        positions = torch.arange(n)
        features = []
        for h, a_k in zip(hidden, bounds, strict=True):
            source = torch.where((positions > front) & (positions <= int(a_k)), positions - 1, positions)
            features.append(embedding.gene_cosines(h, source, weights))  # the moved gene is not compared
        cosine = _overexpression_sums(features, bounds, moved, n)[:, 0] / weights.sum().clamp(min=1)
    return embedding.results(sums, cosine, engine)


def _deletion_sums(sources: list[torch.Tensor], bounds: np.ndarray, deleted: np.ndarray, n: int) -> torch.Tensor:
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


def _overexpression_sums(sources: list[torch.Tensor], bounds: np.ndarray, moved: np.ndarray, n: int) -> torch.Tensor:
    """Per move to the top, the sum over its positions of the anchors' features (see ``estimate_overexpressions``).

    ``sources[k]``: per-position features of the move at ``bounds[k]`` (the first: the original cell), zero at the
    top gene position, which the caller estimates.
    """
    zero = torch.zeros((1, sources[0].shape[1]), dtype=torch.float64)
    prefix = [torch.cat([zero, f.cumsum(0)]) for f in sources]  # prefix[k][p]: sum of rows < p
    sums = torch.empty((len(moved), sources[0].shape[1]), dtype=torch.float64)
    moved_t = torch.as_tensor(moved, dtype=torch.long)
    segment = np.searchsorted(bounds, moved, side="left") - 1  # a < i <= b
    for k in np.unique(segment):
        rows = np.flatnonzero(segment == k)
        i = moved_t[rows]
        a, b = int(bounds[k]), int(bounds[k + 1])
        left, right = prefix[k], prefix[k + 1]
        w = ((i - a).double() / (b - a))[:, None]
        both_left = left[a + 1] + left[n] - left[b + 1]  # positions <= a and > b, where both anchors agree
        both_right = right[a + 1] + right[n] - right[b + 1]
        sums[rows] = (1 - w) * both_left + w * both_right + (right[i + 1] - right[a + 1]) + (left[b + 1] - left[i + 1])
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
