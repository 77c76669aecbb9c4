"""A corpus of a dataset tokenized by the reference: an ``input_ids`` column in Parquet or Arrow files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ._base import Corpus
from ._tables import TableFile, is_list, list_column, list_lengths, table_files


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
            source = TableFile(file)
            schema = source.schema
            if input_ids not in schema.names:
                msg = f"{file} has no column {input_ids!r}; columns: {schema.names}."
                raise KeyError(msg)
            scalar = [n for n in schema.names if n != input_ids and not is_list(schema.field(n).type)]
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
        self._forget_files()

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
            handle = self._handles_open[f] = TableFile(self.files[f])
        return handle

    def _row_group(self, g: int) -> tuple[np.ndarray, np.ndarray]:
        if self._group_cache is not None and self._group_cache[0] == g:
            return self._group_cache[1], self._group_cache[2]
        f, group = self._groups[g]
        flat, offsets = list_column(self._file(f).read(group, [self.column]).column(0))
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
