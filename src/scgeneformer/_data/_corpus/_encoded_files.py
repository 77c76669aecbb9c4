"""A corpus of several AnnData encoded by ``rank_encode`` (``.h5ad`` files, ``.zarr`` stores), rank layers on disk."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._encoding import EncodingInfo
from ._base import Corpus
from ._identity import FileStamp, changed, check_stamp, file_stamp

if TYPE_CHECKING:
    from anndata import AnnData

#: The fields every part of a corpus must share (they define how its token ids read).
SHARED_FIELDS = ("version", "input_size", "pad_id", "mask_id", "cls_id", "eos_id", "first_gene_id")


class EncodedFiles(Corpus):
    """Several AnnData encoded by :func:`~scgeneformer.pp.rank_encode`, read as one corpus.

    Parameters
    ----------
    sources
        Paths of ``.h5ad`` files or ``.zarr`` stores (their rank layers stay on disk: only obs, var and the encoding
        parameters are read), or AnnData objects.
    key
        The ``key_added`` of the encoding.

    Notes
    -----
    Files are opened to read their annotations, closed, and reopened lazily (by each data-loader worker too). Each
    reopening checks that the file is the one read at first: same size and modification time (a ``.zarr`` store:
    those of its groups), then the same encoding (version, special tokens) and the same lengths. A replaced file
    raises an error (a ``RuntimeError``) naming it: call ``sgf.read_corpus`` again.
    """

    def __init__(self, sources: Sequence[str | os.PathLike | AnnData], key: str = "geneformer") -> None:
        import pandas as pd

        super().__init__(key)
        if not len(sources):
            msg = "A corpus needs at least one file."
            raise ValueError(msg)
        self.sources = [s if is_anndata(s) else Path(s) for s in sources]
        self._parts: list[EncodingInfo | None] = [None] * len(self.sources)
        # Stamped before the first reading: a file replaced while it is read is caught when it is next opened.
        self._stamps: list[FileStamp | None] = [None if is_anndata(s) else _stamp_of(s) for s in self.sources]
        self.starts: np.ndarray | None = None  # set once every part has been read: reopened parts are compared
        infos = [self._part(i) for i in range(len(self.sources))]
        first = infos[0]
        for source, info in zip(self.sources[1:], infos[1:], strict=True):
            _check_compatible(first, info, _label(source))
        for name in (*SHARED_FIELDS, "params"):
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
            if is_anndata(source):
                part = EncodingInfo(source, self.key)
            else:
                stamp = self._stamps[i]
                if stamp is not None and self.starts is not None:
                    check_stamp(source, stamp)
                part = EncodingInfo.open(source, self.key)
                if self.starts is not None:
                    self._check_reopened(i, part)
            self._parts[i] = part
        return part

    def _check_reopened(self, i: int, part: EncodingInfo) -> None:
        """Raise if part ``i``, opened again, differs from what the corpus read (encoding, lengths)."""
        differing = [f for f in SHARED_FIELDS if getattr(part, f) != getattr(self, f)]
        what = ", ".join(f"{f} {getattr(self, f)} -> {getattr(part, f)}" for f in differing)
        expected = self.lengths[self.starts[i] : self.starts[i + 1]]
        if not what and part.n_cells != len(expected):
            what = f"{len(expected)} -> {part.n_cells} cells"
        elif not what and not np.array_equal(part.lengths, expected):
            what = "the cells' encoded lengths differ"
        if what:
            part.close()
            raise changed(self.sources[i], what)

    def _in_memory_parts(self) -> list[EncodingInfo | None]:
        """The parts without files of their own (AnnData objects): the ones a process may share."""
        return [p if is_anndata(s) else None for p, s in zip(self._parts, self.sources, strict=True)]

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_parts"] = self._in_memory_parts()
        return state

    def _forget_files(self) -> None:
        self._parts = self._in_memory_parts()

    def _close(self) -> None:
        for i, source in enumerate(self.sources):
            part = self._parts[i]
            if part is not None and not is_anndata(source):
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


def is_anndata(value) -> bool:
    """Whether ``value`` is an AnnData object (anndata is imported only when asked)."""
    from anndata import AnnData

    return isinstance(value, AnnData)


def _check_compatible(first: EncodingInfo, other: EncodingInfo, name: str) -> None:
    differing = [f for f in SHARED_FIELDS if getattr(first, f) != getattr(other, f)]
    if differing:
        details = ", ".join(f"{f}: {getattr(first, f)} vs {getattr(other, f)}" for f in differing)
        msg = f"{name} was encoded differently from the first part of the corpus ({details}); encode all alike."
        raise ValueError(msg)


def _stamp_of(path: Path) -> FileStamp:
    try:
        return file_stamp(path)
    except FileNotFoundError:
        msg = f"{path} does not exist."
        raise FileNotFoundError(msg) from None


def _label(source) -> str:
    return str(source) if not is_anndata(source) else f"AnnData with {source.n_obs} cells"
