"""Batched forward passes of in silico perturbation.

Cells are processed in chunks. For a chunk, each original sequence runs once; its hidden states form a bank on the
device. Then all perturbed sequences of the chunk, across cells, are sorted by length and packed into batches under
the token budget (padded only to each batch's longest sequence; batches of equal lengths run without a mask), and
each batch is compared with the bank in a few vectorised operations: the cell embedding's cosine with the original
(or the mean of the per-gene cosines), the shift toward each state, and optionally every compared gene's cosine.
Results are returned as flat arrays, so memory stays proportional to the results, not to the hidden states.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from .._engine import autocast, pad_sequences, plan_batches
from ._first_layer import DeletionFirstLayer, run_remaining_layers
from ._perturb_ops import ZERO, CellJob

#: Perturbed tokens per chunk of cells: bounds the memory of the originals' bank and of pending results.
CHUNK_TOKENS = 1_000_000


@dataclass
class EngineSpec:
    """What to compute for every perturbation."""

    n_run: int
    pooling: str  # "mean" or "cls"
    cell_cosine: str  # "pooled" or "gene_mean"
    special: bool
    states: torch.Tensor | None  # (n_states, hidden) or None
    gene_shifts: bool
    token_budget: int
    #: compute the first layer of a cell's single-gene deletions together (exact; see ``_first_layer``)
    share_first_layer: bool = True


@dataclass
class ChunkResult:
    """Per-perturbation and per-gene results of one chunk; ``job`` indexes the jobs in the order given."""

    job: np.ndarray
    perturbation: np.ndarray
    cosine: np.ndarray
    shifts: np.ndarray | None
    gene_job: np.ndarray | None = None
    gene_perturbation: np.ndarray | None = None
    gene_token: np.ndarray | None = None
    gene_position: np.ndarray | None = None
    gene_cosine: np.ndarray | None = None


def _chunks(jobs: Iterable[CellJob], chunk_tokens: int) -> Iterator[list[tuple[int, CellJob]]]:
    chunk, tokens = [], 0
    for index, job in enumerate(jobs):
        chunk.append((index, job))
        tokens += sum(len(p) for p in job.perturbed)
        if tokens >= chunk_tokens:
            yield chunk
            chunk, tokens = [], 0
    if chunk:
        yield chunk


def _encode(module, ids: torch.Tensor, lengths: torch.Tensor, n_run: int) -> torch.Tensor:
    # Equal lengths need no mask, which lets SDPA pick its fastest kernel.
    if bool((lengths == ids.shape[1]).all()):
        mask = None
    else:
        mask = (torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]).long()
    return module.encode(ids, mask, n_run).float()


def _pool(hidden: torch.Tensor, lengths: torch.Tensor, spec: EngineSpec) -> torch.Tensor:
    if spec.pooling == "cls":
        return hidden[:, 0]
    positions = torch.arange(hidden.shape[1], device=hidden.device)[None, :]
    first = 1 if spec.special else 0
    last = lengths[:, None] - (1 if spec.special else 0)
    weights = ((positions >= first) & (positions < last)).unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


def _state_shifts(perturbed: torch.Tensor, original: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    cos = torch.nn.functional.cosine_similarity
    after = cos(perturbed[:, None, :], states[None, :, :], dim=-1)
    before = cos(original[:, None, :], states[None, :, :], dim=-1)
    return after - before


@dataclass
class _Outputs:
    job: list = field(default_factory=list)
    k: list = field(default_factory=list)
    cos: list = field(default_factory=list)
    shift: list = field(default_factory=list)
    genes: list = field(default_factory=list)


def _first_layer_applies(module, job: CellJob, spec: EngineSpec) -> bool:
    return (
        spec.share_first_layer
        and job.deleted is not None
        and spec.n_run >= 1
        and len(job.original) > 2
        and DeletionFirstLayer.fits(len(job.original), module.config.num_attention_heads)
    )


def _run_deletions(module, j: int, context, progress) -> None:
    """All single-gene deletions of job ``j``: first layer shared (see ``_first_layer``), then the other layers."""
    jobs, spec = context[0], context[5]
    job = jobs[j]
    device = context[2].device
    ids = torch.as_tensor(job.original, dtype=torch.long, device=device)
    first_layer = DeletionFirstLayer(module.mlm.bert, ids)
    order = np.argsort(job.deleted, kind="stable")
    length = len(job.original) - 1
    size = max(1, spec.token_budget // length)
    for start in range(0, len(order), size):
        ks = order[start : start + size]
        deletions = torch.as_tensor(np.asarray(job.deleted)[ks], dtype=torch.long, device=device)
        hidden = run_remaining_layers(module.mlm.bert, first_layer(deletions), spec.n_run).float()
        lengths = torch.full((len(ks),), length, device=device)
        _compare(hidden, (len(ks), length), lengths, [(j, int(k)) for k in ks], context)
        if progress is not None:
            progress.update(len(ks))


def _compare(hidden, shape, batch_lengths, batch_items, context) -> None:
    """Cell cosines, state shifts and gene cosines of one batch of perturbed hidden states."""
    jobs, offsets, bank, bank_tokens, pooled_original, spec, states, need_genes, out = context
    device = hidden.device
    job_index = np.array([j for j, _ in batch_items])
    k_index = np.array([k for _, k in batch_items])
    pooled = _pool(hidden, batch_lengths, spec)
    original = pooled_original[torch.as_tensor(job_index, device=device)]
    cosine = None
    if need_genes:
        src = np.full(shape, -1, dtype=np.int64)
        for row, (j, k) in enumerate(batch_items):
            s = jobs[j].sources[k]
            src[row, : len(s)] = np.where(s >= 0, s + offsets[j], np.where(s == ZERO, 0, -1))
        src_t = torch.as_tensor(src, device=device)
        compared = src_t >= 0
        gene_cos = torch.nn.functional.cosine_similarity(hidden, bank[src_t.clamp(min=0)], dim=-1)
        gene_cos = gene_cos.masked_fill(~compared, 0.0)
        if spec.cell_cosine == "gene_mean" and spec.pooling == "mean":
            cosine = gene_cos.sum(1) / compared.sum(1).clamp(min=1)
        if spec.gene_shifts:
            labelled = compared & (src_t > 0)
            rows, cols = torch.nonzero(labelled, as_tuple=True)
            rows_np, flat = rows.cpu().numpy(), src[labelled.cpu().numpy()]
            out.genes.append(
                (
                    job_index[rows_np],
                    k_index[rows_np],
                    bank_tokens[flat],
                    flat - offsets[job_index[rows_np]],
                    gene_cos[rows, cols].cpu().numpy(),
                )
            )
    if cosine is None:
        cosine = torch.nn.functional.cosine_similarity(pooled, original, dim=-1)
    out.job.append(job_index)
    out.k.append(k_index)
    out.cos.append(cosine.cpu().numpy())
    if states is not None:
        out.shift.append(_state_shifts(pooled, original, states).cpu().numpy())


def run_perturbations(
    module,
    jobs: Iterable[CellJob],
    spec: EngineSpec,
    *,
    device: torch.device,
    precision: str = "auto",
    progress=None,
    chunk_tokens: int = CHUNK_TOKENS,
) -> Iterator[ChunkResult]:
    """Run the perturbations of ``jobs`` chunk by chunk; yields one :class:`ChunkResult` per chunk."""
    need_genes = spec.gene_shifts or (spec.cell_cosine == "gene_mean" and spec.pooling == "mean")
    states = None if spec.states is None else spec.states.to(device=device, dtype=torch.float32)
    with torch.inference_mode(), autocast(device, precision):
        for chunk in _chunks(jobs, chunk_tokens):
            yield _run_chunk(module, chunk, spec, states, need_genes, device, progress)


def _run_chunk(module, chunk, spec: EngineSpec, states, need_genes: bool, device, progress) -> ChunkResult:
    hidden_size = module.config.hidden_size
    jobs = [job for _, job in chunk]
    # 1. originals, once each; the bank's row 0 is the zero vector the ZERO sources point to
    lengths = np.array([len(job.original) for job in jobs])
    offsets = np.concatenate([[1], 1 + np.cumsum(lengths)[:-1]])
    bank = torch.zeros((1 + lengths.sum(), hidden_size), device=device)
    bank_tokens = np.concatenate([[-1], *[job.original for job in jobs]]).astype(np.int64)
    pooled_original = torch.empty((len(jobs), hidden_size), device=device)
    for batch in plan_batches(lengths, token_budget=spec.token_budget):
        ids, _ = pad_sequences([jobs[j].original for j in batch])
        ids = ids.to(device)
        batch_lengths = torch.as_tensor(lengths[batch], device=device)
        hidden = _encode(module, ids, batch_lengths, spec.n_run)
        pooled_original[torch.as_tensor(batch, device=device)] = _pool(hidden, batch_lengths, spec)
        for row, j in enumerate(batch):
            bank[offsets[j] : offsets[j] + lengths[j]] = hidden[row, : lengths[j]]

    # 2. all perturbed sequences of the chunk, longest first; single-gene deletions of a cell share their first layer
    out = _Outputs()
    context = (jobs, offsets, bank, bank_tokens, pooled_original, spec, states, need_genes, out)
    fast = {j for j, job in enumerate(jobs) if _first_layer_applies(module, job, spec)}
    for j in sorted(fast):
        _run_deletions(module, j, context, progress)
    items = [(j, k) for j, job in enumerate(jobs) if j not in fast for k in range(len(job.perturbed))]
    item_lengths = np.array([len(jobs[j].perturbed[k]) for j, k in items], dtype=np.int64)
    for batch in plan_batches(item_lengths, token_budget=spec.token_budget):
        batch_items = [items[i] for i in batch]
        ids, _ = pad_sequences([jobs[j].perturbed[k] for j, k in batch_items])
        ids = ids.to(device)
        batch_lengths = torch.as_tensor(item_lengths[batch], device=device)
        hidden = _encode(module, ids, batch_lengths, spec.n_run)
        _compare(hidden, ids.shape, batch_lengths, batch_items, context)
        if progress is not None:
            progress.update(len(batch_items))
    out_job, out_k, out_cos, out_shift, gene_parts = out.job, out.k, out.cos, out.shift, out.genes

    chunk_ids = np.array([index for index, _ in chunk])
    result = ChunkResult(
        job=chunk_ids[np.concatenate(out_job)] if out_job else np.empty(0, dtype=np.int64),
        perturbation=np.concatenate(out_k) if out_k else np.empty(0, dtype=np.int64),
        cosine=np.concatenate(out_cos).astype(np.float32) if out_cos else np.empty(0, dtype=np.float32),
        shifts=np.concatenate(out_shift).astype(np.float32) if out_shift else None,
    )
    if gene_parts:
        parts = (np.concatenate(p) for p in zip(*gene_parts, strict=True))
        job_part, k_part, token_part, position_part, cos_part = parts
        result.gene_job = chunk_ids[job_part]
        result.gene_perturbation = k_part
        result.gene_token = token_part
        result.gene_position = position_part
        result.gene_cosine = cos_part.astype(np.float32)
    return result
