"""Training data for Geneformer: length-grouped batches of token sequences read from the rank layer."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import numpy as np
import torch

from .._compute._batching import SequenceCollator, sequence_loader, world
from .._data._encoding import EncodingInfo
from ._module import GENE_LABELS, INPUT_IDS, LABELS, MLM_LABELS


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


class TokenCollator(SequenceCollator):
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
    fixed_masks
        Draw each batch's masks from a generator seeded by the seed and the batch's cells, so that the same cells
        get the same masks every time (validation, evaluation). Otherwise masks follow one generator per process,
        whose state is saved in checkpoints (training).
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
        vocab_size: int,
        mlm_probability: float | None = None,
        seed: int = 0,
        fixed_masks: bool = False,
        labels: np.ndarray | None = None,
        token_labels: np.ndarray | None = None,
    ) -> None:
        super().__init__(info)
        self.fixed_masks = fixed_masks
        self.labels = labels
        self.token_labels = None if token_labels is None else torch.as_tensor(token_labels, dtype=torch.int64)
        self.mlm_probability = mlm_probability
        self.vocab_size = vocab_size
        self.seed = seed
        self.generator: torch.Generator | None = None

    def __call__(self, positions: list[int]) -> dict[str, torch.Tensor]:
        batch = super().__call__(positions)
        cells, ids, mask = batch["cells"].numpy(), batch[INPUT_IDS], batch["attention_mask"]
        if self.labels is not None:
            batch[LABELS] = torch.from_numpy(self.labels[cells].astype(np.int64))
        if self.token_labels is not None:
            batch[GENE_LABELS] = self.token_labels[ids]  # padding (token 0) and special tokens are -100
        if self.mlm_probability:
            if self.fixed_masks:
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(cells.min()))
            else:
                generator = self.masking_generator()
            batch[INPUT_IDS], batch[MLM_LABELS] = mask_genes(
                ids,
                mask,
                gene_token_start=self.info.first_gene_id,
                vocab_size=self.vocab_size,
                mask_id=self.info.mask_id,
                probability=self.mlm_probability,
                generator=generator,
            )
        return batch

    def masking_generator(self) -> torch.Generator:
        """The masking generator of this process (different masks on different ranks and data-loader workers)."""
        if self.generator is None:
            worker = torch.utils.data.get_worker_info()
            worker_id = 0 if worker is None else worker.id + 1
            self.generator = torch.Generator().manual_seed(self.seed + 7919 * world()[1] + 104_729 * worker_id)
        return self.generator

    def for_evaluation(self) -> TokenCollator:
        """The same collation with fixed masks, for validation and evaluation batches."""
        clone = copy.copy(self)
        clone.fixed_masks, clone.generator = True, None
        return clone


class TokenDataModule(pl.LightningDataModule):
    """Loaders of a train/validation/test split of encoded cells: length-grouped, padding-trimmed batches.

    Parameters
    ----------
    info
        The encoded data.
    collator
        Builds each batch with the training task's targets.
    split
        Positions of the training, validation and test cells.
    token_budget, max_cells
        Batch size in padded tokens, and an optional cap on cells per batch.
    seed
        Seed of the batch order.
    num_workers
        Data-loader worker processes. A corpus on disk is read in shuffled blocks of contiguous cells (see
        :class:`~scgeneformer._batching.LengthGroupedBatchSampler`).
    """

    def __init__(
        self,
        info: EncodingInfo,
        *,
        collator: TokenCollator,
        split: tuple[np.ndarray, np.ndarray, np.ndarray],
        token_budget: int,
        max_cells: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.info = info
        self.num_workers = num_workers
        self.collator = collator
        self.token_budget = token_budget
        self.max_cells = max_cells
        self.seed = seed
        self.train_idx, self.val_idx, self.test_idx = split
        self.n_train, self.n_val = len(self.train_idx), len(self.val_idx)

    def state_dict(self) -> dict:
        """What Lightning saves in checkpoints: the masking generator's state.

        A resumed run then masks like an uninterrupted one (the batch order follows the epoch, which Lightning
        restores itself).
        """
        return {"masking_rng": self.collator.masking_generator().get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (called by Lightning when resuming from a checkpoint)."""
        if "masking_rng" in state:
            self.collator.masking_generator().set_state(state["masking_rng"])

    def _loader(self, cells: np.ndarray, *, shuffle: bool, collator: TokenCollator | None = None):
        return sequence_loader(
            self.info,
            cells,
            token_budget=self.token_budget,
            max_cells=self.max_cells,
            shuffle=shuffle,
            seed=self.seed,
            num_workers=self.num_workers,
            collate=collator or self.collator,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self):
        return self._loader(self.train_idx, shuffle=True)

    def val_dataloader(self):
        if not self.n_val:
            return []
        return self._loader(self.val_idx, shuffle=False, collator=self.collator.for_evaluation())

    def test_dataloader(self):
        return self._loader(self.test_idx, shuffle=False, collator=self.collator.for_evaluation())
