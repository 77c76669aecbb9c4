"""Training data for Geneformer: length-grouped batches of token sequences read from the rank layer."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import numpy as np
import torch

from .._engine import pad_sequences, plan_batches
from ..pp._input_ids import EncodingInfo, sequences_for
from ._module import ATTENTION_MASK, GENE_LABELS, INPUT_IDS, LABELS, MLM_LABELS

#: Cells per "megabatch": cells are shuffled, then sorted by length within megabatches so batches hold cells of
#: similar length (little padding) while the order stays random.
MEGABATCH_CELLS = 512


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


class LengthGroupedBatchSampler(torch.utils.data.Sampler):
    """Batches of cell positions under a token budget, grouped by length, shuffled per epoch, split across ranks.

    Each process of a distributed run takes every ``world_size``-th batch (with ``even_split``, the same number of
    batches each, dropping the few left over), so no Lightning sampler injection is needed.
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
    ) -> None:
        self.even_split = even_split
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
        world, rank = _world()
        batches = _at_least(batches, world)
        # Training needs the same number of steps on every rank; inference must not drop any batch.
        usable = len(batches) - len(batches) % world if self.even_split and len(batches) >= world else len(batches)
        return batches[rank:usable:world]

    def __iter__(self):
        yield from (b.tolist() for b in self._batches())

    def __len__(self) -> int:
        return len(self._batches())


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


class _Positions(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def mask_genes(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    gene_token_start: int,
    vocab_size: int,
    mask_id: int,
    probability: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of gene tokens: select ``probability`` of them; 80% become ``<mask>``, 10% a random gene, 10% stay.

    Special tokens (ids below ``gene_token_start``) and padding are never selected. Returns the corrupted ids and
    labels (the original id at selected positions, -100 elsewhere).
    """
    is_gene = attention_mask.bool() & (input_ids >= gene_token_start)
    draw = torch.rand(input_ids.shape, generator=generator)
    selected = is_gene & (draw < probability)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
    action = torch.rand(input_ids.shape, generator=generator)
    corrupted = input_ids.clone()
    corrupted[selected & (action < 0.8)] = mask_id
    random_positions = selected & (action >= 0.8) & (action < 0.9)
    random_genes = torch.randint(gene_token_start, vocab_size, input_ids.shape, generator=generator)
    corrupted[random_positions] = random_genes[random_positions]
    return corrupted, labels


class TokenCollator:
    """Turns a list of cell positions into a padded batch, with the targets of the training task.

    Parameters
    ----------
    info
        The encoded data.
    mlm_probability
        Share of gene tokens masked for masked-gene pretraining (``None``: no masking).
    vocab_size
        Number of tokens (random replacements are drawn among the genes).
    seed
        Seed of the masking.
    labels
        Class code of each cell (cell classification).
    token_labels
        Class code of each token id, -100 for unlabelled tokens (gene classification): a lookup array of
        ``vocab_size`` entries that turns each batch's tokens into per-position gene labels.
    """

    def __init__(
        self,
        info: EncodingInfo,
        *,
        mlm_probability: float | None,
        vocab_size: int,
        seed: int = 0,
        labels: np.ndarray | None = None,
        token_labels: np.ndarray | None = None,
    ) -> None:
        self.info = info
        self.labels = labels
        self.token_labels = None if token_labels is None else torch.as_tensor(token_labels, dtype=torch.int64)
        self.mlm_probability = mlm_probability
        self.vocab_size = vocab_size
        self.seed = seed
        self.generator: torch.Generator | None = None
        self.gene_token_start = 4 if info.n_special else 2  # after <pad>, <mask> (and <cls>, <eos>)

    def __call__(self, positions: list[int]) -> dict[str, torch.Tensor]:
        cells = np.asarray(positions)
        ids, mask = pad_sequences(sequences_for(self.info, cells))
        batch = {INPUT_IDS: ids, ATTENTION_MASK: mask, "cells": torch.from_numpy(cells)}
        if self.labels is not None:
            batch[LABELS] = torch.from_numpy(self.labels[cells].astype(np.int64))
        if self.token_labels is not None:
            batch[GENE_LABELS] = self.token_labels[ids]  # padding (token 0) and special tokens are -100
        if self.mlm_probability:
            if self.generator is None:  # per process: different masks on different ranks
                self.generator = torch.Generator().manual_seed(self.seed + 7919 * _world()[1])
            batch[INPUT_IDS], batch[MLM_LABELS] = mask_genes(
                ids,
                mask,
                gene_token_start=self.gene_token_start,
                vocab_size=self.vocab_size,
                mask_id=1,
                probability=self.mlm_probability,
                generator=self.generator,
            )
        return batch


class TokenDataModule(pl.LightningDataModule):
    """Train/validation/test split of encoded cells with length-grouped, padding-trimmed loaders."""

    def __init__(
        self,
        info: EncodingInfo,
        *,
        collator: TokenCollator,
        train_size: float = 0.9,
        validation_size: float | None = None,
        token_budget: int = 16_384,
        max_cells: int | None = None,
        seed: int = 0,
        split: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> None:
        super().__init__()
        self.info = info
        self.collator = collator
        self.token_budget = token_budget
        self.max_cells = max_cells
        self.seed = seed
        if split is not None:
            self.train_idx, self.val_idx, self.test_idx = split
            self.n_train, self.n_val = len(self.train_idx), len(self.val_idx)
            return
        cells = np.flatnonzero(info.lengths > 0)
        shuffled = np.random.RandomState(seed).permutation(cells)
        validation_size = 1 - train_size if validation_size is None else validation_size
        n_train = math.ceil(train_size * len(cells) - 1e-9)
        n_val = min(len(cells) - n_train, math.floor(validation_size * len(cells) + 1e-9))
        self.train_idx = np.sort(shuffled[:n_train])
        self.val_idx = np.sort(shuffled[n_train : n_train + n_val])
        self.test_idx = np.sort(shuffled[n_train + n_val :])
        self.n_train, self.n_val = len(self.train_idx), len(self.val_idx)

    def _loader(self, cells: np.ndarray, *, shuffle: bool):
        sampler = LengthGroupedBatchSampler(
            cells,
            self.info.lengths[cells],
            token_budget=self.token_budget,
            max_cells=self.max_cells,
            shuffle=shuffle,
            seed=self.seed,
        )
        return torch.utils.data.DataLoader(
            _Positions(self.info.adata.n_obs), batch_sampler=sampler, collate_fn=self.collator
        )

    def train_dataloader(self):
        return self._loader(self.train_idx, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.val_idx, shuffle=False) if self.n_val else []

    def test_dataloader(self):
        return self._loader(self.test_idx, shuffle=False)
