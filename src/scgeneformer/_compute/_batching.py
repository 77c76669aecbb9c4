"""Batches of token sequences: grouped by length under a token budget and padded only to their longest cell.

Shared by inference in this process (:func:`iter_batches`) and every Lightning run, training or inference
(:class:`LengthGroupedBatchSampler`, which also splits batches across processes).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .._data._encoding import EncodingInfo

#: Cells per "megabatch" of a shuffled sampler: cells are shuffled, then sorted by length within megabatches, so
#: batches hold cells of similar length (little padding) while the order stays random.
MEGABATCH_CELLS = 512


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


@dataclass
class TokenBatch:
    """One padded batch: which cells (positions in the AnnData), their tokens and attention mask."""

    cells: np.ndarray
    input_ids: torch.Tensor
    attention_mask: torch.Tensor


def iter_batches(
    info: EncodingInfo, cells: np.ndarray, *, token_budget: int, max_cells: int | None = None
) -> Iterator[TokenBatch]:
    """Padded batches of the encoded ``cells`` (positions in the AnnData), longest first.

    A corpus on disk (``info.block_cells`` set) is visited a window of blocks at a time, longest first within each
    window, so that every block is read once.
    """
    block_cells = getattr(info, "block_cells", None)
    windows = [np.arange(len(cells))] if block_cells is None else block_windows(cells, block_cells, shuffle=False)
    for window in windows:
        lengths = info.lengths[cells[window]]
        for batch in plan_batches(lengths, token_budget=token_budget, max_cells=max_cells):
            positions = cells[window[batch]]
            ids, mask = pad_sequences(info.sequences(positions), info.pad_id)
            yield TokenBatch(positions, ids, mask)


#: Blocks of contiguous cells per window (buffer) of a corpus on disk: a window's blocks stay in the reader's cache.
WINDOW_BLOCKS = 16


def block_windows(
    positions: np.ndarray,
    block_cells: int,
    *,
    shuffle: bool,
    rng: np.random.Generator | None = None,
    window_blocks: int = WINDOW_BLOCKS,
) -> list[np.ndarray]:
    """Group ``positions`` (indices into it are returned) by blocks of ``block_cells`` contiguous cells, into windows.

    Without ``shuffle``, blocks in order; with it, blocks in random order and cells shuffled within each window.
    """
    positions = np.asarray(positions)
    order = np.argsort(positions, kind="stable")
    block_ids = positions[order] // block_cells
    starts = np.flatnonzero(np.r_[True, block_ids[1:] != block_ids[:-1]])
    blocks = np.split(order, starts[1:]) if len(order) else []
    if shuffle:
        blocks = [blocks[i] for i in rng.permutation(len(blocks))]
    windows = []
    for start in range(0, len(blocks), window_blocks):
        window = np.concatenate(blocks[start : start + window_blocks])
        windows.append(rng.permutation(window) if shuffle else window)
    return windows


def world() -> tuple[int, int]:
    """``(world size, rank)`` of the running torch.distributed group, ``(1, 0)`` outside one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


class LengthGroupedBatchSampler(torch.utils.data.Sampler):
    """Batches of cell positions under a token budget, grouped by length, shuffled per epoch, split across ranks.

    Each process of a distributed run takes every ``world_size``-th batch (with ``even_split``, the same number of
    batches each, dropping the few left over), so no Lightning sampler injection is needed.

    For a corpus on disk (``block_cells``), cells are read in blocks of contiguous cells: blocks are shuffled, a
    window of blocks is shuffled cell by cell and cut into length-grouped batches (whose order is shuffled within the
    window), and each process takes whole windows, so every block is read by one process once per epoch.
    """

    def __init__(
        self,
        positions: np.ndarray,
        lengths: np.ndarray,
        *,
        token_budget: int,
        max_cells: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        even_split: bool = True,
        block_cells: int | None = None,
        num_workers: int = 0,
    ) -> None:
        self.even_split = even_split
        self.block_cells = block_cells
        self.num_workers = num_workers
        self.positions = np.asarray(positions)
        self.lengths = np.asarray(lengths)
        self.token_budget = token_budget
        self.max_cells = max_cells
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle differently in each epoch (called by Lightning)."""
        self.epoch = epoch

    def _batches(self) -> list[np.ndarray]:
        if self.block_cells is not None:
            return self._block_batches()
        order = np.arange(len(self.positions))
        if self.shuffle:
            order = np.random.default_rng(self.seed + self.epoch).permutation(order)
        batches = []
        for start in range(0, len(order), MEGABATCH_CELLS):
            mega = order[start : start + MEGABATCH_CELLS]
            for batch in plan_batches(self.lengths[mega], token_budget=self.token_budget, max_cells=self.max_cells):
                batches.append(self.positions[mega[batch]])
        if self.shuffle:
            shuffled = np.random.default_rng(self.seed + self.epoch + 1).permutation(len(batches))
            batches = [batches[i] for i in shuffled]
        size, rank = world()
        batches = _at_least(batches, size)
        # Training needs the same number of steps on every rank; inference must not drop any batch.
        usable = len(batches) - len(batches) % size if self.even_split and len(batches) >= size else len(batches)
        return batches[rank:usable:size]

    def _block_batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng(self.seed + self.epoch) if self.shuffle else None
        windows = []
        for window in block_windows(self.positions, self.block_cells, shuffle=self.shuffle, rng=rng):
            plan = plan_batches(self.lengths[window], token_budget=self.token_budget, max_cells=self.max_cells)
            batches = [self.positions[window[batch]] for batch in plan]
            if self.shuffle:
                batches = [batches[i] for i in rng.permutation(len(batches))]
            windows.append(batches)
        size, rank = world()
        if len(windows) < size:  # fewer windows than processes: split batches instead
            batches = _at_least([b for window in windows for b in window], size)
            usable = len(batches) - len(batches) % size if self.even_split and len(batches) >= size else len(batches)
            return batches[rank:usable:size]
        mine = _interleave_for_workers(windows[rank::size], self.num_workers)
        if self.even_split:  # the same number of steps on every rank
            mine = mine[: min(sum(len(w) for w in windows[r::size]) for r in range(size))]
        return mine

    def __iter__(self):
        yield from (b.tolist() for b in self._batches())

    def __len__(self) -> int:
        return len(self._batches())


def _interleave_for_workers(windows: list[list[np.ndarray]], n_workers: int) -> list[np.ndarray]:
    """Order the batches of ``windows`` so that each data-loader worker reads its own windows.

    A ``DataLoader`` hands batch ``i`` to worker ``i % n_workers``: windows go to workers in turn, and their batches
    are interleaved in that pattern (once the shortest worker's list runs out, the rest follow in order).
    """
    if n_workers <= 1:
        return [b for window in windows for b in window]
    queues = [[b for window in windows[w::n_workers] for b in window] for w in range(n_workers)]
    common = min(len(q) for q in queues)
    ordered = [queues[w][i] for i in range(common) for w in range(n_workers)]
    return ordered + [b for q in queues for b in q[common:]]


def _at_least(batches: list[np.ndarray], n: int) -> list[np.ndarray]:
    """Split the largest batches until there are ``n`` (each rank needs one); repeat batches if cells are fewer."""
    batches = list(batches)
    while 0 < len(batches) < n and max(len(b) for b in batches) > 1:
        largest = max(range(len(batches)), key=lambda i: len(batches[i]))
        batch = batches.pop(largest)
        batches += [batch[: len(batch) // 2], batch[len(batch) // 2 :]]
    distinct = len(batches)
    while 0 < distinct and len(batches) < n:
        batches.append(batches[len(batches) % distinct])  # cycle through the distinct batches
    return batches


class CellPositions(torch.utils.data.Dataset):
    """Dataset of cell positions ``0..n-1``: batches are read by the collator, a batch at a time."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class SequenceCollator:
    """Turns a list of cell positions into a padded batch: ``input_ids``, ``attention_mask`` and ``cells``."""

    def __init__(self, info: EncodingInfo) -> None:
        self.info = info

    def __call__(self, positions: list[int]) -> dict[str, torch.Tensor]:
        cells = np.asarray(positions)
        ids, mask = pad_sequences(self.info.sequences(cells), self.info.pad_id)
        return {"input_ids": ids, "attention_mask": mask, "cells": torch.from_numpy(cells)}


#: Batches a data-loader worker hands to the main process at a time. Each handover has a fixed cost (torch moves
#: every tensor through shared memory, ~1-3 ms), more than reading and padding a batch from a cached block: packing
#: several batches into one buffer per dtype made one worker ~3x faster (benchmarks/README.md, bench_scale.py).
BATCHES_PER_TRANSFER = 8


def batch_loader(
    batch_sampler: LengthGroupedBatchSampler, collate, n_cells: int, *, num_workers: int = 0, **loader_kwargs
):
    """A loader of the batches of ``batch_sampler`` (positions among ``n_cells``), each built by ``collate``.

    ``collate`` turns a list of cell positions into a dict of tensors.

    Without workers, a plain :class:`torch.utils.data.DataLoader`. With workers, each worker builds
    :data:`BATCHES_PER_TRANSFER` batches of its own (the same ones, in the same order, as it would one by one) and
    hands them over packed; the loader yields them one at a time. Either way it has ``batch_sampler`` and ``len()``.
    """
    if num_workers <= 0:
        return torch.utils.data.DataLoader(
            CellPositions(n_cells), batch_sampler=batch_sampler, collate_fn=collate, **loader_kwargs
        )
    return PackedBatchLoader(batch_sampler, collate, n_cells, num_workers=num_workers, **loader_kwargs)


def sequence_loader(
    info,
    cells: np.ndarray,
    *,
    token_budget: int,
    max_cells: int | None = None,
    shuffle: bool,
    seed: int = 0,
    even_split: bool = True,
    num_workers: int = 0,
    collate=None,
    **loader_kwargs,
):
    """Length-grouped, padding-trimmed batches of the encoded ``cells`` of ``info`` (the one sampler + loader set-up).

    ``info`` is an :class:`~scgeneformer.EncodingInfo` or a :class:`~scgeneformer.Corpus` (read in blocks of
    contiguous cells, see :class:`LengthGroupedBatchSampler`). ``collate`` builds each batch from a list of positions
    (default :class:`SequenceCollator`: ``input_ids``, ``attention_mask``, ``cells``). ``even_split`` gives every
    process of a distributed run the same number of batches (training); inference keeps every batch.
    """
    cells = np.asarray(cells, dtype=np.int64)
    sampler = LengthGroupedBatchSampler(
        cells,
        info.lengths[cells],
        token_budget=token_budget,
        max_cells=max_cells,
        shuffle=shuffle,
        seed=seed,
        even_split=even_split,
        block_cells=getattr(info, "block_cells", None),
        num_workers=num_workers,
    )
    return batch_loader(
        sampler, collate or SequenceCollator(info), info.n_cells, num_workers=num_workers, **loader_kwargs
    )


class _WorkerGroups(torch.utils.data.Sampler):
    """The batches of a batch sampler in groups, each group made of batches of one data-loader worker.

    A ``DataLoader`` gives item ``i`` to worker ``i % n_workers``, and the batch sampler orders batches so that each
    worker reads its own windows of blocks: worker ``w``'s batches are ``batches[w::n]``. They are grouped in that
    order, and the groups interleaved the same way.
    """

    def __init__(self, batch_sampler, n_workers: int, size: int) -> None:
        self.batch_sampler, self.n_workers, self.size = batch_sampler, n_workers, size

    def _groups(self) -> list[list[list[int]]]:
        batches = list(self.batch_sampler)
        streams = [batches[w :: self.n_workers] for w in range(self.n_workers)]
        groups = [[s[i : i + self.size] for i in range(0, len(s), self.size)] for s in streams]
        common = min(len(g) for g in groups)
        return [groups[w][i] for i in range(common) for w in range(self.n_workers)] + [
            group for worker_groups in groups for group in worker_groups[common:]
        ]

    def __iter__(self):
        return iter(self._groups())

    def __len__(self) -> int:
        return len(self._groups())


class _Packer:
    """Collates each batch of a group, then packs all their tensors into one flat buffer per dtype."""

    def __init__(self, collate) -> None:
        self.collate = collate

    def __call__(self, group: list[list[int]]):
        parts: dict[torch.dtype, list[torch.Tensor]] = {}
        sizes: dict[torch.dtype, int] = {}
        layout = []
        for positions in group:
            entry = {}
            for key, tensor in self.collate(positions).items():
                offset = sizes.get(tensor.dtype, 0)
                parts.setdefault(tensor.dtype, []).append(tensor.reshape(-1))
                sizes[tensor.dtype] = offset + tensor.numel()
                entry[key] = (tensor.dtype, offset, tuple(tensor.shape))
            layout.append(entry)
        return {dtype: torch.cat(tensors) for dtype, tensors in parts.items()}, layout


class PackedBatchLoader:
    """Batches built by data-loader workers several at a time (see :func:`batch_loader`), yielded one by one."""

    def __init__(self, batch_sampler, collate, n_cells: int, *, num_workers: int, **loader_kwargs) -> None:
        self.batch_sampler = batch_sampler
        self.loader = torch.utils.data.DataLoader(
            CellPositions(n_cells),  # item: a group of batches of positions, passed on to the packer as it is
            sampler=_WorkerGroups(batch_sampler, num_workers, BATCHES_PER_TRANSFER),
            batch_size=None,
            collate_fn=_Packer(collate),
            num_workers=num_workers,
            **loader_kwargs,
        )

    def __iter__(self):
        for buffers, layout in self.loader:
            for entry in layout:
                yield {
                    key: buffers[dtype][offset : offset + _numel(shape)].view(shape)
                    for key, (dtype, offset, shape) in entry.items()
                }

    def __len__(self) -> int:
        return len(self.batch_sampler)


def _numel(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))
