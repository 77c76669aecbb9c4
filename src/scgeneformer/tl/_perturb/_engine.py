"""Batched forward passes of in silico perturbation.

Cells are processed in chunks (the parts of ``_planning``). For a chunk, each original sequence runs once; its hidden
states form a bank on the device. Then all perturbed sequences of the chunk, across cells, are sorted by length and
packed into batches under the token budget (padded only to each batch's longest sequence; batches of equal lengths
run without a mask), and each batch is compared with the bank in a few vectorised operations: the cell embedding's
cosine with the original (or the mean of the per-gene cosines), the shift toward each state, and optionally every
compared gene's cosine. Results are returned as flat arrays, so memory stays proportional to the results, not to
the hidden states.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..._compute._batching import pad_sequences, plan_batches
from ._edits import ZERO
from ._first_layer import DeletionFirstLayer, run_remaining_layers

if TYPE_CHECKING:
    from ._jobs import CellJob


@dataclass
class EngineSpec:
    """What to compute for every perturbation."""

    n_run: int
    pooling: str  # "mean" or "cls"
    cell_cosine: str  # "pooled" or "gene_mean"
    states: torch.Tensor | None  # (n_states, hidden) or None
    gene_shifts: bool
    token_budget: int
    #: compute the first layer of a cell's single-gene deletions together (exact; see ``_first_layer``)
    share_first_layer: bool = True

    @property
    def needs_gene_cosines(self) -> bool:
        return self.gene_shifts or (self.cell_cosine == "gene_mean" and self.pooling == "mean")


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
    #: two-stage screens: which rows are exact (the others are stage-1 estimates); ``None``: all exact
    confirmed: np.ndarray | None = None


def _state_shifts(perturbed: torch.Tensor, original: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    cos = torch.nn.functional.cosine_similarity
    after = cos(perturbed[:, None, :], states[None, :, :], dim=-1)
    before = cos(original[:, None, :], states[None, :, :], dim=-1)
    return after - before


def run_chunk(module, jobs: list[tuple[int, CellJob]], spec: EngineSpec, progress=None) -> ChunkResult:
    """Run one chunk: ``jobs`` are ``(index, job)`` pairs; the result's ``job`` holds those indices."""
    return Chunk(module, jobs, spec, progress).run()


class Chunk:
    """The jobs of one chunk, the bank of their originals' hidden states, and the results gathered so far."""

    def __init__(self, module, chunk: list[tuple[int, CellJob]], spec: EngineSpec, progress) -> None:
        self.module, self.spec, self.progress = module, spec, progress
        self.indices = np.array([index for index, _ in chunk])
        self.jobs = [job for _, job in chunk]
        self.device = next(module.parameters()).device
        self.states = None if spec.states is None else spec.states.to(device=self.device, dtype=torch.float32)
        self.out: dict[str, list] = {"job": [], "k": [], "cos": [], "shift": [], "genes": []}

    def _encode(self, sequences: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states and pooled embeddings of a padded batch; equal lengths run without a mask (fastest SDPA)."""
        ids, mask = (t.to(self.device) for t in pad_sequences(sequences))
        hidden = self.module.encode(ids, None if bool(mask.all()) else mask, self.spec.n_run).float()
        return hidden, self.module.pool(hidden, ids, mask, self.spec.pooling)

    def bank_originals(self) -> None:
        """Run every job's original once: its hidden states (the bank) and its pooled embedding."""
        # the bank's row 0 is the zero vector the ZERO sources point to
        lengths = np.array([len(job.original) for job in self.jobs])
        self.offsets = np.concatenate([[1], 1 + np.cumsum(lengths)[:-1]])
        self.bank = torch.zeros((1 + lengths.sum(), self.module.config.hidden_size), device=self.device)
        self.bank_tokens = np.concatenate([[-1], *[job.original for job in self.jobs]]).astype(np.int64)
        self.pooled_original = torch.empty((len(self.jobs), self.bank.shape[1]), device=self.device)
        for batch in plan_batches(lengths, token_budget=self.spec.token_budget):
            hidden, pooled = self._encode([self.jobs[j].original for j in batch])
            self.pooled_original[torch.as_tensor(batch, device=self.device)] = pooled
            for row, j in enumerate(batch):
                self.bank[self.offsets[j] : self.offsets[j] + lengths[j]] = hidden[row, : lengths[j]]

    def _shares_first_layer(self, job: CellJob) -> bool:
        return (
            self.spec.share_first_layer
            and job.deleted is not None
            and self.spec.n_run >= 1
            and len(job.original) > 2
            and DeletionFirstLayer.fits(len(job.original), self.module.config.num_attention_heads)
        )

    def run(self) -> ChunkResult:
        """Run every perturbation of the chunk and return the results."""
        self.bank_originals()
        # single-gene deletions of a cell share their first layer; everything else runs longest first
        shared = {j for j, job in enumerate(self.jobs) if self._shares_first_layer(job)}
        for j in sorted(shared):
            self._run_deletions(j)
        items = [(j, k) for j, job in enumerate(self.jobs) if j not in shared for k in range(len(job.perturbed))]
        self.run_items(items)
        return self.result()

    def run_items(self, items: list[tuple[int, int]], *, keep_hidden: bool = False) -> dict:
        """Run the perturbed sequences ``items`` (``(job, k)`` pairs) as plain forward passes, in length-sorted batches.

        With ``keep_hidden``, returns each item's hidden states (float64, on the CPU) for the caller's estimates.
        """
        kept = {}
        item_lengths = np.array([len(self.jobs[j].perturbed[k]) for j, k in items], dtype=np.int64)
        for batch in plan_batches(item_lengths, token_budget=self.spec.token_budget):
            batch_items = [items[i] for i in batch]
            hidden, pooled = self._encode([self.jobs[j].perturbed[k] for j, k in batch_items])
            self._compare(hidden, pooled, batch_items)
            if keep_hidden:
                for row, item in enumerate(batch_items):
                    kept[item] = hidden[row, : item_lengths[batch[row]]].double().cpu()
        return kept

    def original_hidden(self, j: int) -> torch.Tensor:
        """The hidden states of job ``j``'s original (float64, on the CPU), as the bank holds them."""
        start = self.offsets[j]
        return self.bank[start : start + len(self.jobs[j].original)].double().cpu()

    def _run_deletions(self, j: int) -> None:
        """All single-gene deletions of job ``j``: first layer shared (see ``_first_layer``), then the other layers."""
        job, bert = self.jobs[j], self.module.mlm.bert
        first_layer = DeletionFirstLayer(bert, torch.as_tensor(job.original, dtype=torch.long, device=self.device))
        order = np.argsort(job.deleted, kind="stable")
        length = len(job.original) - 1
        size = max(1, self.spec.token_budget // length)
        for start in range(0, len(order), size):
            ks = order[start : start + size]
            deletions = torch.as_tensor(np.asarray(job.deleted)[ks], dtype=torch.long, device=self.device)
            hidden = run_remaining_layers(bert, first_layer(deletions), self.spec.n_run).float()
            mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=self.device)
            self._compare(hidden, self.module.pool(hidden, None, mask, self.spec.pooling), [(j, int(k)) for k in ks])

    def _compare(self, hidden: torch.Tensor, pooled: torch.Tensor, batch_items: list[tuple[int, int]]) -> None:
        """Cell cosines, state shifts and gene cosines of one batch of perturbed hidden states."""
        spec, out = self.spec, self.out
        job_index = np.array([j for j, _ in batch_items])
        k_index = np.array([k for _, k in batch_items])
        original = self.pooled_original[torch.as_tensor(job_index, device=self.device)]
        cosine = None
        if spec.needs_gene_cosines:
            # original bank row compared at each perturbed position (0: zero vector, -1: not compared)
            src = np.full(hidden.shape[:2], -1, dtype=np.int64)
            for row, (j, k) in enumerate(batch_items):
                s = self.jobs[j].sources[k]
                src[row, : len(s)] = np.where(s >= 0, s + self.offsets[j], np.where(s == ZERO, 0, -1))
            src_t = torch.as_tensor(src, device=self.device)
            compared = src_t >= 0
            gene_cos = torch.nn.functional.cosine_similarity(hidden, self.bank[src_t.clamp(min=0)], dim=-1)
            gene_cos = gene_cos.masked_fill(~compared, 0.0)
            if spec.cell_cosine == "gene_mean" and spec.pooling == "mean":
                cosine = gene_cos.sum(1) / compared.sum(1).clamp(min=1)
            if spec.gene_shifts:
                labelled = compared & (src_t > 0)
                rows, cols = torch.nonzero(labelled, as_tuple=True)
                rows_np, flat = rows.cpu().numpy(), src[labelled.cpu().numpy()]
                out["genes"].append(
                    (
                        job_index[rows_np],
                        k_index[rows_np],
                        self.bank_tokens[flat],
                        flat - self.offsets[job_index[rows_np]],
                        gene_cos[rows, cols].cpu().numpy(),
                    )
                )
        if cosine is None:
            cosine = torch.nn.functional.cosine_similarity(pooled, original, dim=-1)
        out["job"].append(job_index)
        out["k"].append(k_index)
        out["cos"].append(cosine.cpu().numpy())
        if self.states is not None:
            out["shift"].append(_state_shifts(pooled, original, self.states).cpu().numpy())
        if self.progress is not None:
            self.progress.update(len(batch_items))

    def result(self) -> ChunkResult:
        """Everything compared so far, as flat arrays."""
        out = self.out
        result = ChunkResult(
            job=self.indices[np.concatenate(out["job"])] if out["job"] else np.empty(0, dtype=np.int64),
            perturbation=np.concatenate(out["k"]) if out["k"] else np.empty(0, dtype=np.int64),
            cosine=np.concatenate(out["cos"]).astype(np.float32) if out["cos"] else np.empty(0, dtype=np.float32),
            shifts=np.concatenate(out["shift"]).astype(np.float32) if out["shift"] else None,
        )
        if out["genes"]:
            job_part, k_part, token_part, position_part, cos_part = (
                np.concatenate(p) for p in zip(*out["genes"], strict=True)
            )
            result.gene_job = self.indices[job_part]
            result.gene_perturbation = k_part
            result.gene_token = token_part
            result.gene_position = position_part
            result.gene_cosine = cos_part.astype(np.float32)
        return result
