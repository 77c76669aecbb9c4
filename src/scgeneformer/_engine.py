"""The inference engine shared by embeddings, perturbation and annotation.

Cells are sorted by length and packed into batches under a token budget (cells × longest length), each batch padded
only to its own longest cell; batches run under ``torch.inference_mode`` with SDPA attention, in float32 on CPU and
under bf16/fp16 autocast on CUDA. Token sequences are read batch by batch from the rank layer, so memory does not
grow with the number of cells.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from .pp._input_ids import EncodingInfo, sequences_for

#: Default number of (padded) tokens per batch, by device type.
DEFAULT_TOKEN_BUDGET = {"cpu": 8_192, "cuda": 131_072, "mps": 32_768}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The requested device, or the best available one (CUDA, then Apple MPS, then CPU)."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast(device: torch.device, precision: str = "auto"):
    """Mixed precision context: bf16 (or fp16 where bf16 is unsupported) on CUDA for ``"auto"``, else none."""
    if precision == "auto":
        if device.type != "cuda":
            return nullcontext()
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision in ("32", "fp32", "float32"):
        return nullcontext()
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "16": torch.float16}
    if precision not in dtypes:
        msg = f"precision must be 'auto', 'fp32', 'bf16' or 'fp16', got {precision!r}."
        raise ValueError(msg)
    return torch.autocast(device_type=device.type, dtype=dtypes[precision])


def resolve_token_budget(token_budget: int | None, device: torch.device) -> int:
    """The requested token budget, or the device type's default."""
    return token_budget or DEFAULT_TOKEN_BUDGET.get(device.type, DEFAULT_TOKEN_BUDGET["cpu"])


@contextmanager
def inference(module: torch.nn.Module, device: torch.device, precision: str = "auto") -> Iterator[torch.nn.Module]:
    """``module`` on ``device`` in eval mode, under ``torch.inference_mode`` and the precision's autocast.

    The module's training mode is restored afterwards.
    """
    module = module.to(device)
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode(), autocast(device, precision):
            yield module
    finally:
        module.train(was_training)


def plan_batches(lengths: np.ndarray, *, token_budget: int, max_cells: int | None = None) -> list[np.ndarray]:
    """Split positions ``0..len(lengths)-1`` into batches, longest cells first.

    Each batch holds cells of similar length whose padded size (cells × the batch's longest length) stays within
    ``token_budget``; a single cell longer than the budget forms its own batch.
    """
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        size = max(1, token_budget // longest)
        if max_cells is not None:
            size = min(size, max_cells)
        batches.append(order[start : start + size])
        start += size
    return batches


@dataclass
class TokenBatch:
    """One padded batch: which cells (positions in the AnnData), their tokens and attention mask."""

    cells: np.ndarray
    input_ids: torch.Tensor
    attention_mask: torch.Tensor


def pad_sequences(sequences: list[np.ndarray], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token sequences to the longest one; returns ``(input_ids, attention_mask)`` as int64 tensors."""
    longest = max(len(s) for s in sequences)
    input_ids = np.full((len(sequences), longest), pad_id, dtype=np.int64)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = sequence
    ids = torch.from_numpy(input_ids)
    lengths = torch.tensor([len(s) for s in sequences])
    mask = (torch.arange(longest)[None, :] < lengths[:, None]).long()
    return ids, mask


def iter_batches(
    info: EncodingInfo,
    cells: np.ndarray,
    *,
    token_budget: int,
    max_cells: int | None = None,
) -> Iterator[TokenBatch]:
    """Padded batches of the encoded ``cells`` (positions in the AnnData), longest first."""
    lengths = info.lengths[cells]
    for batch in plan_batches(lengths, token_budget=token_budget, max_cells=max_cells):
        positions = cells[batch]
        ids, mask = pad_sequences(sequences_for(info, positions))
        yield TokenBatch(positions, ids, mask)


def run_batches(
    model,
    info: EncodingInfo,
    cells: np.ndarray,
    step: Callable[[TokenBatch, torch.Tensor, torch.Tensor], None],
    *,
    token_budget: int | None = None,
    max_cells: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
    progress_bar: bool = True,
    description: str = "cells",
) -> torch.device:
    """Call ``step(batch, input_ids, attention_mask)`` on every batch of the encoded ``cells``, tensors on device.

    The model's module runs in eval mode (restored afterwards) under ``torch.inference_mode`` and the precision's
    autocast; cells that were not encoded are skipped. Returns the device used.
    """
    from tqdm.auto import tqdm

    model.check_encoding(info)
    device = resolve_device(device)
    budget = resolve_token_budget(token_budget, device)
    cells = np.asarray(cells, dtype=np.int64)
    encoded = cells[info.lengths[cells] > 0]
    with (
        tqdm(total=len(encoded), desc=description, unit="cell", disable=not progress_bar) as bar,
        inference(model.module, device, precision),
    ):
        for batch in iter_batches(info, encoded, token_budget=budget, max_cells=max_cells):
            step(batch, batch.input_ids.to(device), batch.attention_mask.to(device))
            bar.update(len(batch.cells))
    return device


def gene_token_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor, has_special_tokens: bool) -> torch.Tensor:
    """Positions holding gene tokens: not padding and, in V2, neither ``<cls>`` (first) nor ``<eos>`` (last)."""
    mask = attention_mask.bool().clone()
    if has_special_tokens:
        mask[:, 0] = False
        last = attention_mask.sum(1) - 1
        mask[torch.arange(len(last)), last] = False
    return mask
