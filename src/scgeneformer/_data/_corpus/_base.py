"""What every corpus offers: the encoding's interface (lengths, special tokens, sequences), a loader and its results.

A subclass reads the tokens of a range of contiguous cells (:meth:`Corpus._read_range`); this class reads them a
block at a time through a :class:`~._blocks.BlockCache` and answers every query from those blocks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from .._encoding import SequenceLayout, encoding_keys
from ._blocks import BLOCK_CELLS, Block, BlockCache

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData


class Corpus(SequenceLayout):
    """Encoded cells on disk, read a block of contiguous cells at a time.

    Create one with :func:`scgeneformer.read_corpus`. Every tool and training method that takes encoded data
    accepts a corpus; results go into :attr:`adata`.

    Attributes
    ----------
    version
        ``"V1"`` or ``"V2"``.
    lengths
        Sequence length of each cell, special tokens included (0: not encoded).
    obs
        Cell annotations (one row per cell, in corpus order).

    Examples
    --------
    >>> corpus = sgf.read_corpus(["part1.h5ad", "part2.h5ad"])  # doctest: +SKIP
    >>> corpus.sequences([0, 1])  # token ids of the first two cells  # doctest: +SKIP
    >>> model = sgf.GeneformerModel.from_pretrained("Geneformer-V1-10M", corpus)  # doctest: +SKIP
    >>> model.train(max_epochs=1, execution={"num_workers": 2})  # doctest: +SKIP
    """

    version: str
    input_size: int
    pad_id: int
    mask_id: int
    cls_id: int
    eos_id: int
    first_gene_id: int
    lengths: np.ndarray
    obs: pd.DataFrame
    params: dict[str, Any]
    #: Contiguous cells per read: loaders group their reads by these blocks.
    block_cells: int = BLOCK_CELLS

    def __init__(self, key: str = "geneformer") -> None:
        self.key = key
        self.keys = encoding_keys(key)
        self._cache = BlockCache()
        self._adata: AnnData | None = None

    # -- what subclasses provide ----------------------------------------------------------------------------------
    def _read_range(self, start: int, stop: int) -> Block:
        """Tokens of cells ``start..stop-1`` as ``(flat int32 tokens, offsets)``; cell i starts at ``offsets[i]``."""
        raise NotImplementedError

    def _close(self) -> None:
        """Close open files (they are reopened when needed)."""

    def _forget_files(self) -> None:
        """Drop (without closing) file handles inherited from another process; they are reopened when needed."""

    # -- the EncodingInfo interface -------------------------------------------------------------------------------
    @property
    def var_token(self) -> np.ndarray:
        """No ``.var``: genes are named through the vocabulary."""
        return np.empty(0, dtype=np.int64)

    def encoded_cells(self) -> np.ndarray:
        """Positions of the encoded cells (length > 0)."""
        return np.flatnonzero(self.lengths > 0)

    def sequences(self, positions) -> list[np.ndarray]:
        """Token sequences (int32, special tokens included) of the cells at ``positions``, in that order."""
        idx = np.asarray(positions, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_cells):
            msg = f"Cell positions must be in [0, {self.n_cells})."
            raise IndexError(msg)
        out: list[np.ndarray] = [None] * len(idx)  # type: ignore[list-item]
        blocks = idx // self.block_cells
        for block in np.unique(blocks):
            flat, offsets = self._block(int(block))
            first = int(block) * self.block_cells
            for i in np.flatnonzero(blocks == block):
                local = idx[i] - first
                out[i] = flat[offsets[local] : offsets[local + 1]]
        return out

    def token_occurrences(self, cells=None) -> np.ndarray:
        """How often each token id occurs in the sequences of ``cells`` (positions; default all cells)."""
        selected = None
        if cells is not None:
            selected = np.zeros(self.n_cells, dtype=bool)
            selected[np.asarray(cells, dtype=np.int64)] = True
        counts = np.zeros(0, dtype=np.int64)
        for start, flat, offsets in self._iter_ranges(selected):
            tokens = flat
            if selected is not None:
                tokens = flat[np.repeat(selected[start : start + len(offsets) - 1], np.diff(offsets))]
            block = np.bincount(tokens[tokens >= self.first_gene_id], minlength=len(counts))
            counts = np.pad(counts, (0, len(block) - len(counts))) + block
        return counts

    def cells_holding(self, tokens, *, every: bool = False) -> np.ndarray:
        """Boolean mask of the encoded cells holding any (or, with ``every``, each) of the token ids ``tokens``."""
        tokens = np.unique(np.atleast_1d(np.asarray(tokens, dtype=np.int64)))
        mask = np.zeros(self.n_cells, dtype=bool)
        for start, flat, offsets in self._iter_ranges():
            n_cells = len(offsets) - 1
            cell_of_token = np.repeat(np.arange(n_cells), np.diff(offsets))
            # a cell holds each gene once: counting its hits tells "any" from "every"
            hits = np.bincount(cell_of_token[np.isin(flat, tokens)], minlength=n_cells)
            mask[start : start + n_cells] = hits == len(tokens) if every else hits > 0
        return mask & (self.lengths > 0)

    def dataloader(
        self,
        *,
        token_budget: int = 8192,
        max_cells: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        cells: np.ndarray | None = None,
    ):
        """Padded batches of token sequences, read from disk as the training loader reads them.

        Blocks of contiguous cells are shuffled, then cells within windows of blocks; each window is cut into
        batches of similar lengths under ``token_budget`` padded tokens, whose order is shuffled. In a
        torch.distributed run each process takes its own windows. For models of your own, or to inspect the data.

        Parameters
        ----------
        token_budget
            Padded tokens per batch (cells × the batch's longest cell).
        max_cells
            Optional cap on the cells of a batch.
        shuffle
            Shuffle as described; without, blocks in order and the longest cells of each window first.
        seed
            Seed of the shuffling; call ``loader.batch_sampler.set_epoch(epoch)`` for each epoch's order.
        num_workers
            Worker processes reading and padding batches (each reads its own windows and hands over 8 batches
            at a time).
        cells
            Positions of the cells to read (default: every encoded cell).

        Returns
        -------
        An iterable of dicts with ``input_ids`` and ``attention_mask`` (int64, padded to the batch's longest cell) and
        ``cells`` (positions in the corpus), with ``len()`` and ``batch_sampler``: a
        :class:`torch.utils.data.DataLoader`, or with workers a loader whose workers hand over several batches at a
        time (one transfer costs more than reading a batch).

        Examples
        --------
        >>> for batch in corpus.dataloader(token_budget=16384):  # doctest: +SKIP
        ...     outputs = my_model(batch["input_ids"], attention_mask=batch["attention_mask"])
        """
        from ..._compute._batching import sequence_loader

        cells = self.encoded_cells() if cells is None else cells
        return sequence_loader(
            self,
            cells,
            token_budget=token_budget,
            max_cells=max_cells,
            shuffle=shuffle,
            seed=seed,
            even_split=False,
            num_workers=num_workers,
        )

    # -- results --------------------------------------------------------------------------------------------------
    @property
    def adata(self) -> AnnData:
        """AnnData of the cells' annotations (no genes) into which the tools write their results."""
        if self._adata is None:
            import anndata as ad

            adata = ad.AnnData(obs=self.obs.copy())
            adata.uns[self.keys.uns] = {"params": dict(self.params), "corpus": repr(self)}
            self._adata = adata
        return self._adata

    @property
    def obs_names(self) -> pd.Index:
        """Cell names."""
        return self.obs.index

    # -- reading blocks -------------------------------------------------------------------------------------------
    def _in_this_process(self) -> None:
        if self._cache.moved_process():
            self._forget_files()

    def _block(self, block: int) -> Block:
        self._in_this_process()
        return self._cache.get(block, self._read_block)

    def _read_block(self, block: int) -> Block:
        start = block * self.block_cells
        return self._read_range(start, min(start + self.block_cells, self.n_cells))

    def _iter_ranges(self, selected: np.ndarray | None = None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(first cell, flat tokens, offsets)`` block by block, in corpus order, without filling the cache.

        With a boolean mask ``selected``, blocks without a selected cell are skipped.
        """
        self._in_this_process()
        for start in range(0, self.n_cells, self.block_cells):
            stop = min(start + self.block_cells, self.n_cells)
            if selected is None or selected[start:stop].any():
                yield (start, *self._read_range(start, stop))

    def __getstate__(self) -> dict:
        # Spawned processes get the corpus without its open files, cache (see BlockCache) and results AnnData.
        state = self.__dict__.copy()
        state["_adata"] = None
        return state

    def __len__(self) -> int:
        return self.n_cells

    def __repr__(self) -> str:
        encoded = int((self.lengths > 0).sum())
        return f"{type(self).__name__}({self.version}, {encoded} of {self.n_cells} cells encoded)"
