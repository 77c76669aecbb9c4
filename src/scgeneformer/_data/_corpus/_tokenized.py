"""A corpus of a dataset tokenized by the reference: an ``input_ids`` column in Parquet or Arrow files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ._base import Corpus
from ._identity import FileStamp, changed, check_stamp, file_stamp
from ._tables import TableFile, is_list, is_numeric_list, list_column, list_lengths, table_files

#: Cells at the start of every file whose tokens are checked when the dataset is opened.
SAMPLE_CELLS = 256


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

    Notes
    -----
    The token ids are checked against ``vocabulary``, with an error naming the file, the cell and the token id:

    - when the dataset is opened, on the first :data:`SAMPLE_CELLS` cells of every file, and again on every row
      group as it is read (training, inference): ids are integers (a floating-point column must hold whole numbers;
      nothing is truncated or wrapped) in ``[0, len(vocabulary))``; V2 cells start with ``<cls>``, end with
      ``<eos>`` and hold no other special token; V1 cells hold no special token (``<pad>``, ``<mask>``); no id is
      missing; each row group holds the lengths read when the dataset was opened;
    - when opened, on that sample only: V1 cells that all start with one token and end with another (as cells
      wrapped in V2's ``<cls>`` … ``<eos>`` do) are refused as V2 data declared V1.

    Files are reopened lazily (by each data-loader worker too); each reopening checks that the file still has the
    size, modification time and row groups it had when the dataset was opened, else raises an error (a
    ``RuntimeError``) naming it: call ``sgf.read_corpus`` again.
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

        from ...vocabulary import get_vocabulary

        super().__init__(key)
        path = Path(path)
        self.files = table_files(path) if path.is_dir() else [path]
        if not self.files:
            msg = f"No Parquet or Arrow files in {path}."
            raise FileNotFoundError(msg)
        self.column = input_ids
        vocab = get_vocabulary(vocabulary)
        self.version, self.input_size = vocab.version, vocab.input_size
        self.vocabulary_size = len(vocab)
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
        #: The row groups of each file, as positions in ``_groups``.
        self._file_groups: list[range] = []
        # Stamped before the first reading: a file replaced while it is read is caught when it is next opened.
        self._stamps: list[FileStamp] = [file_stamp(file) for file in self.files]
        group_rows, annotations, lengths, samples = [], [], [], []
        for f, file in enumerate(self.files):
            source = TableFile(file)
            schema = source.schema
            if input_ids not in schema.names:
                msg = f"{file} has no column {input_ids!r}; columns: {schema.names}."
                raise KeyError(msg)
            if not is_numeric_list(schema.field(input_ids).type):
                msg = (
                    f"{file}: column {input_ids!r} holds {schema.field(input_ids).type}, not lists of integer token "
                    "ids."
                )
                raise TypeError(msg)
            samples.append(source.head([input_ids], SAMPLE_CELLS).column(0))
            scalar = [n for n in schema.names if n != input_ids and not is_list(schema.field(n).type)]
            # The reference stores each sequence's length: read it instead of every token when it is there.
            stored_length = "length" in scalar
            self._file_groups.append(range(len(self._groups), len(self._groups) + source.n_groups))
            for g in range(source.n_groups):
                self._groups.append((f, g))
                table = source.read(g, scalar)
                group_rows.append(table.num_rows)
                annotations.append(table.to_pandas())
                if stored_length:
                    lengths.append(table.column("length").to_numpy())
                else:
                    lengths.append(list_lengths(source.read(g, [input_ids]).column(0)))
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
        for f, sample in enumerate(samples):
            values, offsets, missing = list_column(sample)
            where = str(self.files[f])
            first = int(self.group_starts[self._file_groups[f].start])
            flat = self._checked_tokens(values, offsets, missing, where=where, first_cell=first)
            self._check_not_v2(flat, offsets, where=where)
            stored = self.lengths[first : first + len(offsets) - 1]
            if not np.array_equal(np.diff(offsets), stored):
                cell = first + int(np.flatnonzero(np.diff(offsets) != stored)[0])
                msg = f"{where}: cell {cell}'s 'length' ({stored[cell - first]}) is not its number of token ids."
                raise ValueError(msg)
        self._forget_files()

    def _checked_tokens(
        self, values: np.ndarray, offsets: np.ndarray, missing: int, *, where: str, first_cell: int
    ) -> np.ndarray:
        """``values`` as int32 token ids, once they are checked against the vocabulary (see the class notes)."""
        if missing:
            msg = f"{where}: {missing} token ids or sequences are missing (null); every cell needs its token ids."
            raise ValueError(msg)

        def refuse(position: int, problem: str) -> ValueError:
            cell = first_cell + int(np.searchsorted(offsets, position, side="right") - 1)
            return ValueError(f"{where}: cell {cell} holds token id {values[position].item()}{problem}")

        if values.dtype.kind == "f":
            bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)))
            if len(bad):
                raise refuse(bad[0], ", which is not an integer: token ids must be integers.")
        elif values.dtype.kind not in "iu":
            msg = f"{where}: token ids must be integers, got values of type {values.dtype}."
            raise TypeError(msg)
        bad = np.flatnonzero((values < 0) | (values >= self.vocabulary_size))
        if len(bad):
            problem = (
                f", outside the {self.version} vocabulary (ids 0 to {self.vocabulary_size - 1}): is `vocabulary` the "
                "one the dataset was tokenized with?"
            )
            raise refuse(bad[0], problem)
        flat = values.astype(np.int32)
        lengths = np.diff(offsets)
        starts, ends = offsets[:-1][lengths > 0], offsets[1:][lengths > 0] - 1
        special = flat < self.first_gene_id
        if self.has_special_tokens:
            short = np.flatnonzero((lengths > 0) & (lengths < 2))
            if len(short):
                msg = f"{where}: cell {first_cell + short[0]} holds 1 token; V2 cells hold at least <cls> and <eos>."
                raise ValueError(msg)
            advice = "is it V1 data (vocabulary='V1')? V2 cells are wrapped in <cls> … <eos>."
            bad = starts[flat[starts] != self.cls_id]
            if len(bad):
                raise refuse(bad[0], f" first, where <cls> ({self.cls_id}) belongs: {advice}")
            bad = ends[flat[ends] != self.eos_id]
            if len(bad):
                raise refuse(bad[0], f" last, where <eos> ({self.eos_id}) belongs: {advice}")
            special[starts] = special[ends] = False
        bad = np.flatnonzero(special)
        if len(bad):
            where_allowed = "only first (<cls>) and last (<eos>)" if self.has_special_tokens else "none in V1 data"
            raise refuse(bad[0], f", a special token ({where_allowed}); gene ids start at {self.first_gene_id}.")
        return flat

    def _check_not_v2(self, flat: np.ndarray, offsets: np.ndarray, *, where: str) -> None:
        """Refuse V1-declared cells that all start with one token and end with another, as V2's cells do."""
        if self.has_special_tokens:
            return
        lengths = np.diff(offsets)
        starts, ends = offsets[:-1][lengths > 1], offsets[1:][lengths > 1] - 1
        if len(starts) >= 2 and len(np.unique(flat[starts])) == 1 and len(np.unique(flat[ends])) == 1:
            msg = (
                f"{where}: every cell starts with token {flat[starts[0]]} and ends with token {flat[ends[0]]}, as V2 "
                "cells wrapped in <cls> … <eos> do, not as V1 rank encodings: was the dataset tokenized with V2? "
                "Pass vocabulary='V2'."
            )
            raise ValueError(msg)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_handles_open"], state["_group_cache"] = {}, None
        return state

    def _forget_files(self) -> None:
        self._handles_open: dict[int, Any] = {}
        # The last row group read: a block of cells rarely spans two, consecutive blocks often share one.
        self._group_cache: tuple[int, np.ndarray, np.ndarray] | None = None

    def _close(self) -> None:
        self._forget_files()  # Arrow and Parquet handles close as they are dropped

    def _file(self, f: int) -> TableFile:
        handle = self._handles_open.get(f)
        if handle is None:
            path = self.files[f]
            check_stamp(path, self._stamps[f])
            handle = TableFile(path)
            rows = [handle.group_rows(group) for group in range(handle.n_groups)]
            expected = [int(self.group_starts[g + 1] - self.group_starts[g]) for g in self._file_groups[f]]
            if rows != expected:
                handle.close()
                raise changed(path, f"row groups of {expected} rows when opened, now {rows}")
            self._handles_open[f] = handle
        return handle

    def _row_group(self, g: int) -> tuple[np.ndarray, np.ndarray]:
        if self._group_cache is not None and self._group_cache[0] == g:
            return self._group_cache[1], self._group_cache[2]
        f, group = self._groups[g]
        values, offsets, missing = list_column(self._file(f).read(group, [self.column]).column(0))
        first = int(self.group_starts[g])
        if not np.array_equal(np.diff(offsets), self.lengths[first : int(self.group_starts[g + 1])]):
            raise changed(self.files[f], f"the lengths of the cells of row group {group} differ")
        flat = self._checked_tokens(
            values, offsets, missing, where=f"{self.files[f]} (row group {group})", first_cell=first
        )
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
