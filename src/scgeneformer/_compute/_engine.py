"""The inference engine shared by embeddings, annotation, gene classification and perturbation baselines.

Cells are sorted by length and packed into batches under a token budget, each padded only to its own longest cell;
batches run under ``torch.inference_mode`` with SDPA attention, in float32 on CPU and under bf16/fp16 autocast on
CUDA. Token sequences are read batch by batch from the rank layer, so memory does not grow with the number of cells.

A run computes, per batch, per-cell values and/or per-token sums (``compute(module, cells, input_ids,
attention_mask)`` returns them) and collects them in :class:`InferenceResults`. The same function and the same
accumulator serve a run in this process and a Lightning run over several processes or devices (see
:class:`~scgeneformer.Execution`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch

from .._utils._progress import progress_bar
from ._batching import iter_batches, sequence_loader
from ._execution import Execution
from ._lightning import gather_objects, in_distributed_run, lightning_predict

if TYPE_CHECKING:
    from .._data._encoding import EncodingInfo

#: ``compute(module, cells, input_ids, attention_mask)`` → ``{"cells": (B, k)}`` and/or ``{"token_ids": (N,),
#: "token_values": (N, k)}``: per-cell rows, and values to sum per token id (``cells``: the batch's positions).
Compute = Callable[[torch.nn.Module, np.ndarray, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


@contextmanager
def inference(module: torch.nn.Module, device: torch.device, execution: Execution) -> Iterator[torch.nn.Module]:
    """``module`` on ``device`` in eval mode, under ``torch.inference_mode`` and the execution's autocast.

    The module's training mode is restored afterwards.
    """
    if not getattr(module, "quantized", False):  # bitsandbytes places quantized weights itself
        module = module.to(device)
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode(), execution.autocast(device):
            yield module
    finally:
        module.train(was_training)


def gene_token_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor, has_special_tokens: bool) -> torch.Tensor:
    """Positions holding gene tokens: not padding and, in V2, neither ``<cls>`` (first) nor ``<eos>`` (last)."""
    mask = attention_mask.bool().clone()
    if has_special_tokens:
        mask[:, 0] = False
        last = attention_mask.sum(1) - 1
        mask[torch.arange(len(last)), last] = False
    return mask


class InferenceResults:
    """What an inference run collects: one row per requested cell, and sums and counts per token id.

    Parameters
    ----------
    cells
        Positions of the requested cells; ``cell_values`` has one row per position, in this order (NaN for cells
        that were not encoded).
    n_obs
        Number of cells in the data.
    cell_width
        Width of the per-cell rows (``None``: none collected).
    token_shape
        ``(number of token ids, width)`` of the per-token sums (``None``: none collected).
    """

    def __init__(
        self,
        cells: np.ndarray,
        n_obs: int,
        *,
        cell_width: int | None = None,
        token_shape: tuple[int, int] | None = None,
    ) -> None:
        self.cells = np.asarray(cells, dtype=np.int64)
        self._row_of = np.full(n_obs, -1, dtype=np.int64)
        self._row_of[self.cells] = np.arange(len(self.cells))
        self.cell_values = None if cell_width is None else np.full((len(cells), cell_width), np.nan, dtype=np.float32)
        self._filled = np.zeros(len(cells), dtype=bool)
        self.token_shape = token_shape
        self._token_sums: torch.Tensor | None = None
        self._token_counts: torch.Tensor | None = None

    def add(self, positions: np.ndarray, outputs: dict[str, torch.Tensor]) -> None:
        """Record one batch's outputs for the cells at ``positions``."""
        if "cells" in outputs:
            rows = self._row_of[np.asarray(positions)]
            self.cell_values[rows] = outputs["cells"].float().cpu().numpy()
            self._filled[rows] = True
        if "token_ids" in outputs:
            ids, values = outputs["token_ids"], outputs["token_values"]
            if self._token_sums is None:
                # float64 sums on the compute device (MPS has no float64)
                dtype = torch.float32 if values.device.type == "mps" else torch.float64
                self._token_sums = torch.zeros(self.token_shape, dtype=dtype, device=values.device)
                self._token_counts = torch.zeros(self.token_shape[0], dtype=torch.int64, device=values.device)
            self._token_sums.index_add_(0, ids, values.to(self._token_sums.dtype))
            self._token_counts.index_add_(0, ids, torch.ones(len(ids), dtype=torch.int64, device=ids.device))

    @property
    def token_sums(self) -> np.ndarray:
        """Per-token sums, float64 ``(token ids, width)``."""
        if self._token_sums is None:
            return np.zeros(self.token_shape, dtype=np.float64)
        return self._token_sums.cpu().numpy().astype(np.float64, copy=False)

    @property
    def token_counts(self) -> np.ndarray:
        """Per-token number of summed values."""
        if self._token_counts is None:
            return np.zeros(self.token_shape[0], dtype=np.int64)
        return self._token_counts.cpu().numpy()

    def gather(self) -> None:
        """Combine the results of every process of a torch.distributed run, so that each holds all of them."""
        if not in_distributed_run():
            return
        mine = (
            np.flatnonzero(self._filled),
            None if self.cell_values is None else self.cell_values[self._filled],
            None if self._token_sums is None else (self.token_sums, self.token_counts),
        )
        sums = None
        for rows, values, tokens in gather_objects(mine):
            if values is not None:
                self.cell_values[rows] = values
                self._filled[rows] = True
            if tokens is not None:
                sums = tokens if sums is None else (sums[0] + tokens[0], sums[1] + tokens[1])
        if sums is not None:
            self._token_sums, self._token_counts = torch.from_numpy(sums[0]), torch.from_numpy(sums[1])


def run_inference(
    module: torch.nn.Module,
    info: EncodingInfo,
    cells: np.ndarray,
    compute: Compute,
    results: InferenceResults,
    execution: Execution | None = None,
    *,
    description: str = "cells",
) -> InferenceResults:
    """Run ``compute`` on every batch of the encoded ``cells`` and collect its outputs in ``results``.

    In this process, the module runs on ``execution.device`` in eval mode (restored afterwards); with several devices
    or processes, through Lightning (every process receives all results). Cells that were not encoded are skipped.
    """
    execution = Execution.coerce(execution)
    cells = np.asarray(cells, dtype=np.int64)
    encoded = cells[info.lengths[cells] > 0]
    if execution.distributed:
        _run_lightning(module, info, encoded, compute, results, execution)
        return results
    device = execution.device
    budget = execution.token_budget_for(device.type)
    with (
        progress_bar(total=len(encoded), desc=description, unit="cell", disable=not execution.show_progress) as bar,
        inference(module, device, execution),
    ):
        for batch in iter_batches(info, encoded, token_budget=budget, max_cells=execution.batch_size):
            ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
            results.add(batch.cells, compute(module, batch.cells, ids, mask))
            bar.update(len(batch.cells))
    return results


def _run_lightning(module, info, cells, compute: Compute, results: InferenceResults, execution: Execution) -> None:
    """:func:`run_inference` through the Lightning predict harness (one process per device)."""

    def step(module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> None:
        cells = batch["cells"].cpu().numpy()
        results.add(cells, compute(module, cells, batch["input_ids"], batch["attention_mask"]))

    loader = sequence_loader(
        info,
        cells,
        token_budget=execution.token_budget_for(),
        max_cells=execution.batch_size,
        shuffle=False,
        even_split=False,
        num_workers=execution.num_workers,
    )
    lightning_predict(module, loader, execution, step, at_end=results.gather)
