"""Encoded corpora larger than memory: several encoded AnnData files, or tokenized datasets in Parquet.

A :class:`Corpus` reads like :class:`~scgeneformer._encoding.EncodingInfo` (lengths, special tokens, token sequences
of any cells) but keeps the token sequences on disk: only the lengths and cell annotations are in memory, and
sequences are read a block of contiguous cells at a time into a small cache. Readers that visit cells block by block
(the block-shuffled training loader, windowed inference, perturbation) therefore read each block once.

The tools write results into :attr:`Corpus.adata`, an AnnData of the corpus's cell annotations without genes.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._encoding import EncodingInfo, SequenceLayout, encoding_keys

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData

#: Contiguous cells read from disk at once.
BLOCK_CELLS = 1024
#: Blocks kept in memory by each process (and each data-loader worker).
CACHE_BLOCKS = 16


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
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._adata: AnnData | None = None
        self._pid = os.getpid()

    # -- what subclasses provide ----------------------------------------------------------------------------------
    def _read_range(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokens of cells ``start..stop-1`` as ``(flat int32 tokens, offsets)``; cell i starts at ``offsets[i]``."""
        raise NotImplementedError

    def _close(self) -> None:
        """Close open files (they are reopened when needed)."""

    def _forget_files(self) -> None:
        """Drop (without closing) file handles inherited from another process; they are reopened when needed."""

    def _in_this_process(self) -> None:
        # HDF5 and Arrow handles must not be shared with forked data-loader workers: each process opens its own.
        if self._pid != os.getpid():
            self._forget_files()
            self._cache = OrderedDict()
            self._pid = os.getpid()

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

    def _iter_ranges(self, selected: np.ndarray | None = None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(first cell, flat tokens, offsets)`` block by block, in corpus order, without filling the cache.

        With a boolean mask ``selected``, blocks without a selected cell are skipped.
        """
        self._in_this_process()
        for start in range(0, self.n_cells, self.block_cells):
            stop = min(start + self.block_cells, self.n_cells)
            if selected is None or selected[start:stop].any():
                yield (start, *self._read_range(start, stop))

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
        from .._compute._batching import sequence_loader

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
            adata._sgf_corpus = self  # how model.encoding_info finds the sequences of these cells
            self._adata = adata
        return self._adata

    @property
    def obs_names(self) -> pd.Index:
        """Cell names."""
        return self.obs.index

    # -- the block cache ------------------------------------------------------------------------------------------
    def _block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        self._in_this_process()
        cached = self._cache.get(block)
        if cached is not None:
            self._cache.move_to_end(block)
            return cached
        start = block * self.block_cells
        cached = self._read_range(start, min(start + self.block_cells, self.n_cells))
        self._cache[block] = cached
        while len(self._cache) > CACHE_BLOCKS:
            self._cache.popitem(last=False)
        return cached

    def __getstate__(self) -> dict:
        # Spawned processes get the corpus without its open files and cache; they open their own.
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        state["_adata"] = None
        state["_pid"] = -1
        return state

    def __len__(self) -> int:
        return self.n_cells

    def __repr__(self) -> str:
        encoded = int((self.lengths > 0).sum())
        return f"{type(self).__name__}({self.version}, {encoded} of {self.n_cells} cells encoded)"


def _check_compatible(first: EncodingInfo | Corpus, other: EncodingInfo | Corpus, name: str) -> None:
    fields = ("version", "input_size", "pad_id", "mask_id", "cls_id", "eos_id", "first_gene_id")
    differing = [f for f in fields if getattr(first, f) != getattr(other, f)]
    if differing:
        details = ", ".join(f"{f}: {getattr(first, f)} vs {getattr(other, f)}" for f in differing)
        msg = f"{name} was encoded differently from the first part of the corpus ({details}); encode all alike."
        raise ValueError(msg)


class EncodedFiles(Corpus):
    """Several AnnData encoded by :func:`~scgeneformer.pp.rank_encode`, read as one corpus.

    Parameters
    ----------
    sources
        Paths of ``.h5ad`` files or ``.zarr`` stores (their rank layers stay on disk: only obs, var and the encoding
        parameters are read), or AnnData objects.
    key
        The ``key_added`` of the encoding.
    """

    def __init__(self, sources: Sequence[str | os.PathLike | AnnData], key: str = "geneformer") -> None:
        import pandas as pd

        super().__init__(key)
        if not len(sources):
            msg = "A corpus needs at least one file."
            raise ValueError(msg)
        self.sources = [s if _is_anndata(s) else Path(s) for s in sources]
        self._parts: list[EncodingInfo | None] = [None] * len(self.sources)
        infos = [self._part(i) for i in range(len(self.sources))]
        first = infos[0]
        for source, info in zip(self.sources[1:], infos[1:], strict=True):
            _check_compatible(first, info, _label(source))
        for name in ("version", "input_size", "pad_id", "mask_id", "cls_id", "eos_id", "first_gene_id", "params"):
            setattr(self, name, getattr(first, name))
        self.lengths = np.concatenate([info.lengths for info in infos])
        self.starts = np.concatenate([[0], np.cumsum([info.n_cells for info in infos])])
        self.obs = pd.concat([info.adata.obs for info in infos])
        self.file_of_cell = np.repeat(np.arange(len(infos)), np.diff(self.starts))
        self._close()  # files are reopened lazily, in the process that reads them

    def _part(self, i: int) -> EncodingInfo:
        part = self._parts[i]
        if part is None:
            source = self.sources[i]
            part = EncodingInfo(source, self.key) if _is_anndata(source) else EncodingInfo.open(source, self.key)
            self._parts[i] = part
        return part

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_parts"] = [p if _is_anndata(s) else None for p, s in zip(self._parts, self.sources, strict=True)]
        return state

    def _forget_files(self) -> None:
        self._parts = [p if _is_anndata(s) else None for p, s in zip(self._parts, self.sources, strict=True)]

    def _close(self) -> None:
        for i, source in enumerate(self.sources):
            part = self._parts[i]
            if part is not None and not _is_anndata(source):
                part.close()
                self._parts[i] = None

    def _read_range(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        flats, lengths = [], []
        first_file = int(np.searchsorted(self.starts, start, side="right") - 1)
        for i in range(first_file, len(self.sources)):
            lo, hi = max(start, self.starts[i]), min(stop, self.starts[i + 1])
            if lo >= hi:
                if self.starts[i] >= stop:
                    break
                continue
            flat, offsets = self._part(i).sequence_range(int(lo - self.starts[i]), int(hi - self.starts[i]))
            flats.append(flat)
            lengths.append(np.diff(offsets))
        lengths = np.concatenate(lengths)
        return np.concatenate(flats), np.concatenate([[0], np.cumsum(lengths)])

    def __repr__(self) -> str:
        encoded = int((self.lengths > 0).sum())
        return f"EncodedFiles({self.version}, {len(self.sources)} files, {encoded} of {self.n_cells} cells encoded)"


class TokenizedDataset(Corpus):
    """A tokenized dataset in the reference's format: an ``input_ids`` column in Parquet or Arrow files.

    Parameters
    ----------
    path
        A Parquet or Arrow file, or a folder of them (read in name order): a Hugging Face ``datasets`` folder written
        by ``save_to_disk`` (as the reference's tokenizer does; its ``.arrow`` files are memory-mapped), or a dataset
        exported with ``to_parquet``.
    vocabulary
        The vocabulary the dataset was tokenized with (``"V1"``, ``"V2"``, a :class:`~scgeneformer.Vocabulary` or a
        folder): it defines the special tokens. V2 datasets hold ``<cls>`` and ``<eos>`` in ``input_ids``.
    input_ids
        Column of the token sequences.
    cell_names
        Column naming the cells (default: ``"0"``, ``"1"``, … in dataset order).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        vocabulary,
        *,
        input_ids: str = "input_ids",
        cell_names: str | None = None,
        key: str = "geneformer",
    ) -> None:
        import pandas as pd

        from ..vocabulary import get_vocabulary

        super().__init__(key)
        path = Path(path)
        self.files = _table_files(path) if path.is_dir() else [path]
        if not self.files:
            msg = f"No Parquet or Arrow files in {path}."
            raise FileNotFoundError(msg)
        self.column = input_ids
        vocab = get_vocabulary(vocabulary)
        self.version, self.input_size = vocab.version, vocab.input_size
        self.pad_id, self.mask_id = vocab.pad_id, vocab.mask_id
        self.cls_id = -1 if vocab.cls_id is None else vocab.cls_id
        self.eos_id = -1 if vocab.eos_id is None else vocab.eos_id
        self.first_gene_id = 1 + max(vocab.special_ids)
        self.params = {
            "vocabulary": vocab.version,
            "vocabulary_source": str(vocab.source),
            "input_size": vocab.input_size,
            "pad_id": self.pad_id,
            "mask_id": self.mask_id,
            "cls_id": self.cls_id,
            "eos_id": self.eos_id,
            "first_gene_id": self.first_gene_id,
            "source": str(path),
        }
        # Row groups (record batches) of every file; only annotations and lengths are read here.
        self._groups: list[tuple[int, int]] = []
        group_rows, annotations, lengths = [], [], []
        for f, file in enumerate(self.files):
            source = _TableFile(file)
            schema = source.schema
            if input_ids not in schema.names:
                msg = f"{file} has no column {input_ids!r}; columns: {schema.names}."
                raise KeyError(msg)
            scalar = [n for n in schema.names if n != input_ids and not _is_list(schema.field(n).type)]
            # The reference stores each sequence's length: read it instead of every token when it is there.
            stored_length = "length" in scalar
            for g in range(source.n_groups):
                self._groups.append((f, g))
                table = source.read(g, scalar)
                group_rows.append(table.num_rows)
                annotations.append(table.to_pandas())
                if stored_length:
                    lengths.append(table.column("length").to_numpy())
                else:
                    lengths.append(_list_lengths(source.read(g, [input_ids]).column(0)))
            source.close()
        self.group_starts = np.concatenate([[0], np.cumsum(group_rows)]).astype(np.int64)
        self.lengths = np.concatenate(lengths).astype(np.int64) if lengths else np.zeros(0, dtype=np.int64)
        obs = pd.concat(annotations, ignore_index=True) if annotations else pd.DataFrame()
        if cell_names is not None:
            obs.index = obs.pop(cell_names).astype(str).to_numpy()
        else:
            obs.index = np.arange(len(obs)).astype(str)
        self.obs = obs
        too_long = self.lengths > self.input_size
        if too_long.any():
            msg = (
                f"{int(too_long.sum())} sequences are longer than the {self.version} input size ({self.input_size}): "
                "is `vocabulary` the one the dataset was tokenized with?"
            )
            raise ValueError(msg)
        self._handles_open: dict[int, Any] = {}
        self._group_cache: tuple[int, np.ndarray, np.ndarray] | None = None

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_handles_open"], state["_group_cache"] = {}, None
        return state

    def _forget_files(self) -> None:
        self._handles_open, self._group_cache = {}, None

    def _file(self, f: int) -> _TableFile:
        handle = self._handles_open.get(f)
        if handle is None:
            handle = self._handles_open[f] = _TableFile(self.files[f])
        return handle

    def _row_group(self, g: int) -> tuple[np.ndarray, np.ndarray]:
        if self._group_cache is not None and self._group_cache[0] == g:
            return self._group_cache[1], self._group_cache[2]
        f, group = self._groups[g]
        column = self._file(f).read(group, [self.column]).column(0).combine_chunks()
        offsets = column.offsets.to_numpy().astype(np.int64)
        flat = column.values.to_numpy(zero_copy_only=False).astype(np.int32)
        flat, offsets = flat[offsets[0] : offsets[-1]], offsets - offsets[0]
        self._group_cache = (g, flat, offsets)
        return flat, offsets

    def _read_range(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        flats, lengths = [], []
        g = int(np.searchsorted(self.group_starts, start, side="right") - 1)
        while start < stop:
            flat, offsets = self._row_group(g)
            lo = start - self.group_starts[g]
            hi = min(stop, self.group_starts[g + 1]) - self.group_starts[g]
            flats.append(flat[offsets[lo] : offsets[hi]])
            lengths.append(np.diff(offsets[lo : hi + 1]))
            start = int(self.group_starts[g] + hi)
            g += 1
        lengths = np.concatenate(lengths)
        return np.concatenate(flats), np.concatenate([[0], np.cumsum(lengths)])

    def _close(self) -> None:
        self._handles_open = {}
        self._group_cache = None


def _table_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.parquet")) or sorted(folder.glob("*.arrow"))


class _TableFile:
    """Row groups of a Parquet file, or record batches of a (memory-mapped) Arrow IPC file or stream."""

    def __init__(self, path: Path) -> None:
        import pyarrow as pa

        self.path = path
        if path.suffix == ".arrow":
            source = pa.memory_map(str(path))
            try:
                table = pa.ipc.open_stream(source).read_all()  # Hugging Face datasets write Arrow streams
            except pa.ArrowInvalid:
                table = pa.ipc.open_file(source).read_all()
            self.batches = table.to_batches()
            self.schema = table.schema
            self.parquet = None
        else:
            import pyarrow.parquet as pq

            self.parquet = pq.ParquetFile(path)
            self.schema = self.parquet.schema_arrow

    @property
    def n_groups(self) -> int:
        return self.parquet.num_row_groups if self.parquet is not None else len(self.batches)

    def read(self, group: int, columns: list[str]):
        import pyarrow as pa

        if self.parquet is not None:
            return self.parquet.read_row_group(group, columns=columns)
        return pa.Table.from_batches([self.batches[group]]).select(columns)

    def close(self) -> None:
        if self.parquet is not None:
            self.parquet.close()


def read_corpus(
    source,
    *,
    key: str = "geneformer",
    vocabulary=None,
    cell_names: str | None = None,
) -> Corpus:
    """Open an encoded corpus that may be larger than memory, for training, embeddings, annotation and perturbation.

    Only the cells' lengths and annotations are loaded; token sequences are read from disk as they are used, a block
    of contiguous cells at a time. Pass the corpus where a tool or training method takes encoded data; results go
    into ``corpus.adata`` (an AnnData of the cell annotations, without genes).

    Parameters
    ----------
    source
        - a path or list of paths of AnnData files (``.h5ad`` or ``.zarr``) encoded by
          :func:`~scgeneformer.pp.rank_encode` (e.g. ``rank_encode`` on each file opened with ``backed="r+"``);
        - an :class:`anndata.experimental.AnnCollection` or a list of AnnData (backed ones are reopened from their
          files, so their rank layers stay on disk);
        - a dataset tokenized by the reference (an ``input_ids`` column): a Hugging Face ``datasets`` folder saved
          with ``save_to_disk`` (Arrow files), or Parquet files; needs ``vocabulary``.
    key
        The ``key_added`` of the encoding (AnnData files).
    vocabulary
        For tokenized datasets: the vocabulary they were tokenized with (``"V1"``, ``"V2"`` or a folder).
    cell_names
        For tokenized datasets: the column naming the cells (default: ``"0"``, ``"1"``, …).

    Returns
    -------
    A :class:`~scgeneformer.Corpus`.

    Examples
    --------
    >>> corpus = sgf.read_corpus(["part1.h5ad", "part2.h5ad"])  # doctest: +SKIP
    >>> sgf.tl.embed(corpus, model)  # doctest: +SKIP
    >>> corpus.adata.obsm["X_geneformer"].shape  # doctest: +SKIP
    >>> genecorpus = sgf.read_corpus("genecorpus.parquet", vocabulary="V1")  # doctest: +SKIP
    """
    if isinstance(source, Corpus):
        return source
    if type(source).__name__ == "AnnCollection":
        source = list(source.adatas.values()) if isinstance(source.adatas, dict) else list(source.adatas)
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.exists():
            msg = f"{path} does not exist."
            raise FileNotFoundError(msg)
        if path.suffix in (".parquet", ".arrow") or (path.is_dir() and _table_files(path)):
            if vocabulary is None:
                msg = "A tokenized dataset needs `vocabulary=`: the vocabulary it was tokenized with."
                raise ValueError(msg)
            return TokenizedDataset(path, vocabulary, cell_names=cell_names, key=key)
        source = [path]
    if _is_anndata(source):
        source = [source]
    if not isinstance(source, Sequence):
        msg = (
            "read_corpus takes a path, a list of paths or AnnData objects, an AnnCollection or a Parquet dataset; "
            f"got {type(source).__name__}."
        )
        raise TypeError(msg)
    sources = []
    for item in source:
        if _is_anndata(item) and item.isbacked:
            item = Path(item.filename)  # reopened lazily: anndata's backed mode loads layers into memory
        sources.append(item)
    return EncodedFiles(sources, key=key)


def _is_anndata(value) -> bool:
    from anndata import AnnData

    return isinstance(value, AnnData)


def _label(source) -> str:
    return str(source) if not _is_anndata(source) else f"AnnData with {source.n_obs} cells"


def _is_list(arrow_type) -> bool:
    import pyarrow as pa

    return pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)


def _list_lengths(column) -> np.ndarray:
    import pyarrow.compute as pc

    return pc.list_value_length(column).to_numpy(zero_copy_only=False)


__all__ = ["BLOCK_CELLS", "Corpus", "EncodedFiles", "TokenizedDataset", "read_corpus"]
