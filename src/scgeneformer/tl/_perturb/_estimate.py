"""Stage-1 estimates of a two-stage screen: every single-gene perturbation of a cell from a few exact ones.

Deleting the gene at position ``i`` of a cell of ``n`` tokens leaves ``n - 1`` positions: position ``p`` holds the
original token ``p`` when ``p < i`` and token ``p + 1`` when ``p >= i``. An exact deletion at another position ``a``
("anchor") has the same token at the same position wherever both agree on that rule. With anchors ``a <= i < b`` (the
last, virtual, anchor being the original cell itself, whose first ``n - 1`` rows hold tokens ``p`` at positions
``p``), the hidden state of deletion ``i`` at position ``p`` is estimated by

- ``D_b[p]`` for ``a <= p < i`` (same token, same position; ``D_b`` is the deletion at ``b``),
- ``D_a[p]`` for ``i <= p < b`` (the same shifted token at the same position),
- ``(1 - w) D_a[p] + w D_b[p]`` elsewhere, where both agree.

The blend weight ``w`` is the share of the genes between ``a`` and ``b`` lying above ``i``, each gene weighted by its
*influence*: the sum over the first layer's heads of the squared attention it receives from the other genes of the
original cell (``first_layer_influence``). A few genes draw most of that attention, and the others' states change
most where such a gene is shifted or missing; weighting by influence halved the estimates' error against equal
weights, ``w = (i - a) / (b - a)`` (measured on 24 PBMC cells with a small pretrained model).

What this leaves out is *which* gene between ``a`` and ``b`` is missing (its effect on the context of the others);
the loss of the gene's own row and the one-position shift of every gene below it are kept. Sums over positions of
these estimates follow from prefix sums, for every ``i`` at once in ``O(n d)`` per cell: the mean-pooled embedding
(or the ``<cls>`` state, or the mean of per-gene cosines) of every deletion, hence its cosine to the original and its
shift toward each goal state. Overexpression is the mirror image (``estimate_overexpressions``). All arithmetic
after the encoder is in float64, so estimates are deterministic and not quantised by float32 cosines (shifts can be
~1e-7). Which anchors to run is decided in rounds by ``_stage_one``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from ._engine import EngineSpec


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


def first_layer_influence(module: torch.nn.Module, ids: np.ndarray) -> torch.Tensor:
    """Per position of a cell's token ids: its influence on the others' states, the blend weight of the estimates.

    The sum over the first layer's heads of the squared attention the position receives from the other positions
    (float64). Runs the embeddings and the first layer's query and key projections only.
    """
    bert = module.mlm.bert
    device = next(module.parameters()).device
    attention = bert.encoder.layer[0].attention.self
    heads, size = attention.num_attention_heads, attention.attention_head_size
    with torch.inference_mode():
        hidden = bert.embeddings(input_ids=torch.as_tensor(ids, dtype=torch.long, device=device)[None])[0]
        query = attention.query(hidden).view(-1, heads, size).transpose(0, 1)
        key = attention.key(hidden).view(-1, heads, size).transpose(0, 1)
        influence = torch.zeros(len(ids), dtype=torch.float64)
        for head in range(heads):  # one head's n × n at a time: long V2 cells stay small
            probabilities = torch.softmax(query[head] @ key[head].T / size**0.5, dim=-1).double()
            received = probabilities.sum(0) - torch.diagonal(probabilities)
            influence += (received**2).cpu()
    return influence


def _weight_prefix(influence: torch.Tensor | None, n: int) -> torch.Tensor:
    """Prefix sums of the positions' blend weights (``[p]``: weight below ``p``); equal weights without influence."""
    if influence is None:
        return torch.arange(n + 1, dtype=torch.float64)
    weights = influence.double() + 1e-12 * influence.double().mean().clamp(min=1e-300)  # no interval weighs zero
    return torch.cat([torch.zeros(1, dtype=torch.float64), weights.cumsum(0)])


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
    influence: torch.Tensor | None = None,
    cache: dict | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Estimated cosine and state shifts of deleting each position in ``deleted`` (see the module description).

    ``original``: hidden states of the cell (``n × d``, float64); ``anchor_hidden``: those of the exact deletions at
    ``anchors`` (``(n - 1) × d`` each, sorted positions, the first gene's position first); ``influence``: per-position
    blend weights (``None``: equal); ``cache``: a dict kept between calls for one cell (prefix sums per anchor).
    """
    embedding = _Embedding(original, engine, special)
    n, end = embedding.n, embedding.end
    weights = embedding.weights(n - 1, end - 1)  # gene positions of a deleted sequence
    bounds = np.concatenate([anchors, [end]])
    hidden = dict(zip(bounds.tolist(), [*anchor_hidden, original[: n - 1]], strict=True))
    blend = _weight_prefix(influence, n)
    pooled = _prefixes(cache, "pooled", bounds, lambda b: hidden[b] * weights[:, None])
    sums = _deletion_sums(pooled, bounds, deleted, n, blend)
    cosine = None
    if embedding.gene_mean:
        compared = torch.zeros(n - 1, dtype=torch.float64)
        compared[embedding.first : end - 1] = 1.0
        positions = torch.arange(n - 1)

        def gene_cosines(b: int) -> torch.Tensor:
            return embedding.gene_cosines(hidden[b], positions + (positions >= b).long(), compared)

        features = _prefixes(cache, "gene_cosines", bounds, gene_cosines)
        cosine = _deletion_sums(features, bounds, deleted, n, blend)[:, 0] / compared.sum().clamp(min=1)
    return embedding.results(sums, cosine, engine)


def estimate_overexpressions(
    original: torch.Tensor,
    anchors: np.ndarray,
    anchor_hidden: list[torch.Tensor],
    moved: np.ndarray,
    engine: EngineSpec,
    special: bool,
    influence: torch.Tensor | None = None,
    cache: dict | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Estimated cosine and state shifts of moving each gene position in ``moved`` to the top.

    Moving the gene at ``i`` to the top position ``f`` shifts the genes at ``f .. i - 1`` one position down and
    leaves the others in place, the mirror image of a deletion. With anchors ``a < i <= b`` (exact moves; the
    original cell is the virtual anchor at the first gene), position ``p`` of move ``i`` is estimated by ``M_b[p]``
    for ``a < p <= i`` and by ``M_a[p]`` for ``i < p <= b`` (same token, same position), and by the mix
    ``(1 - w) M_a[p] + w M_b[p]`` where both agree (``w``: the influence-weighted share of ``(a, b]`` up to ``i``).
    The moved gene itself, at ``f``, is its original state plus the mean of what moving to the top did to the anchors'
    genes. ``original``: hidden states of the cell (``n × d``, float64); ``anchor_hidden``: those of the exact moves
    at ``anchors`` (sorted; the last gene's position last); ``influence`` and ``cache`` as in ``estimate_deletions``.
    """
    embedding = _Embedding(original, engine, special)
    n, front = embedding.n, embedding.first
    weights = embedding.weights(n, embedding.end)
    at_top = weights[front].clone()
    weights[front] = 0.0  # the moved gene's row is estimated on its own
    bounds = np.concatenate([[front], anchors])
    hidden = dict(zip(bounds.tolist(), [original, *anchor_hidden], strict=True))
    blend = _weight_prefix(influence, n)
    pooled = _prefixes(cache, "pooled", bounds, lambda b: hidden[b] * weights[:, None])
    sums = _overexpression_sums(pooled, bounds, moved, n, blend)
    # what moving to the top did to the anchors' own genes, on average (measured: steadier than the neighbours')
    lift = torch.stack([h[front] - original[int(a)] for h, a in zip(anchor_hidden, anchors, strict=True)]).mean(0)
    top_row = original[torch.as_tensor(moved, dtype=torch.long)] + lift
    sums = sums + at_top * top_row
    cosine = None
    if embedding.gene_mean:
        positions = torch.arange(n)

        def gene_cosines(b: int) -> torch.Tensor:  # the moved gene is not compared
            source = torch.where((positions > front) & (positions <= b), positions - 1, positions)
            return embedding.gene_cosines(hidden[b], source, weights)

        features = _prefixes(cache, "gene_cosines", bounds, gene_cosines)
        cosine = _overexpression_sums(features, bounds, moved, n, blend)[:, 0] / weights.sum().clamp(min=1)
    return embedding.results(sums, cosine, engine)


def _prefixes(cache: dict | None, kind: str, bounds: np.ndarray, features) -> list[torch.Tensor]:
    """Per bound, the prefix sums (``[p]``: rows below ``p``) of ``features(bound)``, kept in ``cache`` if given."""
    out = []
    for bound in bounds.tolist():
        prefix = None if cache is None else cache.get((kind, bound))
        if prefix is None:
            rows = features(bound)
            prefix = torch.cat([torch.zeros((1, rows.shape[1]), dtype=torch.float64), rows.cumsum(0)])
            if cache is not None:
                cache[(kind, bound)] = prefix
        out.append(prefix)
    return out


def _deletion_sums(
    prefix: list[torch.Tensor], bounds: np.ndarray, deleted: np.ndarray, n: int, blend: torch.Tensor
) -> torch.Tensor:
    """Per deletion, the sum over its positions of the anchors' features as the module description combines them.

    ``prefix[k]``: prefix sums of the per-position features of the deletion at ``bounds[k]`` (the last: the original
    cell); ``blend``: prefix sums of the positions' blend weights.
    """
    sums = torch.empty((len(deleted), prefix[0].shape[1]), dtype=torch.float64)
    deleted_t = torch.as_tensor(deleted, dtype=torch.long)
    segment = np.searchsorted(bounds, deleted, side="right") - 1
    for k in np.unique(segment):
        rows = np.flatnonzero(segment == k)
        i = deleted_t[rows]
        a, b = int(bounds[k]), int(bounds[k + 1])
        left, right = prefix[k], prefix[k + 1]
        stop = min(b, n - 1)
        w = ((blend[i] - blend[a]) / (blend[b] - blend[a]))[:, None]
        both_left = left[a] + left[n - 1] - left[stop]  # positions < a and >= b, where both anchors agree
        both_right = right[a] + right[n - 1] - right[stop]
        sums[rows] = (1 - w) * both_left + w * both_right + (right[i] - right[a]) + (left[stop] - left[i])
    return sums


def _overexpression_sums(
    prefix: list[torch.Tensor], bounds: np.ndarray, moved: np.ndarray, n: int, blend: torch.Tensor
) -> torch.Tensor:
    """Per move to the top, the sum over its positions of the anchors' features (see ``estimate_overexpressions``).

    ``prefix[k]``: prefix sums of the per-position features of the move at ``bounds[k]`` (the first: the original
    cell), zero at the top gene position, which the caller estimates; ``blend``: prefix sums of the blend weights.
    """
    sums = torch.empty((len(moved), prefix[0].shape[1]), dtype=torch.float64)
    moved_t = torch.as_tensor(moved, dtype=torch.long)
    segment = np.searchsorted(bounds, moved, side="left") - 1  # a < i <= b
    for k in np.unique(segment):
        rows = np.flatnonzero(segment == k)
        i = moved_t[rows]
        a, b = int(bounds[k]), int(bounds[k + 1])
        left, right = prefix[k], prefix[k + 1]
        w = ((blend[i + 1] - blend[a + 1]) / (blend[b + 1] - blend[a + 1]))[:, None]
        both_left = left[a + 1] + left[n] - left[b + 1]  # positions <= a and > b, where both anchors agree
        both_right = right[a + 1] + right[n] - right[b + 1]
        sums[rows] = (1 - w) * both_left + w * both_right + (right[i + 1] - right[a + 1]) + (left[b + 1] - left[i + 1])
    return sums
