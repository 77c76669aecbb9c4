"""The encoding contract: what :func:`~scgeneformer.pp.rank_encode` stores in an AnnData and how every layer reads it.

``rank_encode`` writes four keys (see :func:`encoding_keys`); :class:`EncodingInfo` checks them and reads them back:
the special token ids, each gene's token, each cell's sequence length, and the cells' token sequences, assembled
from the sparse rank layer (which may stay on disk) a block of rows at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from anndata import AnnData

#: Rows of the rank layer read at a time when scanning it (backed layers stay on disk).
ROW_BLOCK = 20_000
#: Token ids of ``<pad>`` and ``<mask>`` in both published vocabularies, for data encoded before they were stored.
DEFAULT_PAD_ID = 0
DEFAULT_MASK_ID = 1


class InvalidTokensError(ValueError):
    """Token ids that are not integers of the vocabulary (checked before any is converted or used)."""


class EncodingKeys(NamedTuple):
    """Where :func:`~scgeneformer.pp.rank_encode` stores an encoding made with ``key_added``."""

    ranks: str
    token: str
    n_tokens: str
    uns: str


def encoding_keys(key_added: str = "geneformer") -> EncodingKeys:
    """Names of the keys :func:`~scgeneformer.pp.rank_encode` writes for ``key_added``.

    Examples
    --------
    >>> encoding_keys("geneformer").ranks
    'geneformer_ranks'
    """
    return EncodingKeys(
        ranks=f"{key_added}_ranks", token=f"{key_added}_token", n_tokens=f"{key_added}_n_tokens", uns=key_added
    )


class SequenceLayout:
    """Special tokens and cell count of encoded cells, from ``cls_id`` and ``lengths`` (shared by every source)."""

    cls_id: int
    lengths: np.ndarray

    @property
    def n_special(self) -> int:
        """Special tokens wrapping each encoded cell (2 in V2: ``<cls>``, ``<eos>``; 0 in V1)."""
        return 2 if self.cls_id >= 0 else 0

    @property
    def has_special_tokens(self) -> bool:
        """Whether cells are wrapped in ``<cls>`` … ``<eos>`` (V2)."""
        return self.n_special > 0

    @property
    def n_cells(self) -> int:
        """Number of cells (encoded or not)."""
        return len(self.lengths)


class EncodingInfo(SequenceLayout):
    """A rank-encoded AnnData as the models read it: vocabulary, special tokens, lengths and token sequences.

    Parameters
    ----------
    adata
        AnnData encoded by :func:`~scgeneformer.pp.rank_encode`.
    key
        The ``key_added`` used when encoding.

    Attributes
    ----------
    adata
        The AnnData.
    keys
        Its :class:`EncodingKeys`.
    version
        ``"V1"`` or ``"V2"``.
    input_size
        Model input size of the vocabulary (2,048 or 4,096), special tokens included.
    pad_id, mask_id, cls_id, eos_id
        Special token ids (``cls_id``/``eos_id`` are -1 in V1).
    first_gene_id
        Lowest token id of a gene: ids below it are special tokens.
    var_token
        Token of each ``.var`` gene (-1 outside the vocabulary).
    lengths
        Sequence length of each cell, special tokens included (0: not encoded).

    Examples
    --------
    >>> info = sgf.EncodingInfo(adata)  # doctest: +SKIP
    >>> info.sequences([0, 1])  # token ids of the first two cells  # doctest: +SKIP
    """

    def __init__(self, adata: AnnData, key: str = "geneformer", *, ranks=None) -> None:
        keys = encoding_keys(key)
        self._ranks = ranks  # a rank layer read from elsewhere (e.g. left on disk by `open`)
        self._file = None
        missing = [
            f"{where}[{name!r}]"
            for where, mapping, name in (
                ("uns", adata.uns, keys.uns),
                ("layers", {keys.ranks: ranks} if ranks is not None else adata.layers, keys.ranks),
                ("var", adata.var, keys.token),
                ("obs", adata.obs, keys.n_tokens),
            )
            if name not in mapping
        ]
        if missing:
            msg = f"The data are not rank-encoded (missing {', '.join(missing)}); run `sgf.pp.rank_encode` first."
            raise KeyError(msg)
        self.adata = adata
        self.key = key
        self.keys = keys
        params = adata.uns[keys.uns]["params"]
        self.params = params
        self.version: str = str(params["vocabulary"])
        self.input_size = int(params["input_size"])
        self.cls_id = int(params["cls_id"])
        self.eos_id = int(params["eos_id"])
        self.pad_id = int(params.get("pad_id", DEFAULT_PAD_ID))
        self.mask_id = int(params.get("mask_id", DEFAULT_MASK_ID))
        default_first = 1 + max(self.pad_id, self.mask_id, self.cls_id, self.eos_id)
        self.first_gene_id = int(params.get("first_gene_id", default_first))
        self.var_token = _token_column(adata.var[keys.token], f"var[{keys.token!r}]", self.first_gene_id)
        self.lengths = adata.obs[keys.n_tokens].to_numpy(dtype=np.int64)

    @classmethod
    def open(cls, path, key: str = "geneformer") -> EncodingInfo:
        """The encoding of an ``.h5ad`` file or ``.zarr`` store, with its rank layer left on disk.

        Only obs, var and the encoding parameters are read (anndata's ``backed`` mode would load every layer).
        :attr:`adata` holds them, without expression data. Call :meth:`close` when done.
        """
        import anndata as ad
        from anndata.io import read_elem, sparse_dataset

        path = Path(path)
        if not path.exists():
            msg = f"{path} does not exist."
            raise FileNotFoundError(msg)
        if path.suffix == ".zarr" or path.is_dir():
            import zarr

            group = zarr.open_group(path, mode="r")
            handle = None
        else:
            import h5py

            handle = group = h5py.File(path, "r")
        keys = encoding_keys(key)
        try:
            if keys.uns not in group.get("uns", {}) or keys.ranks not in group.get("layers", {}):
                msg = f"{path} is not rank-encoded with key {key!r}; run `sgf.pp.rank_encode` on it and save it."
                raise KeyError(msg)
            obs, var = read_elem(group["obs"]), read_elem(group["var"])
            adata = ad.AnnData(obs=obs, var=var, uns={keys.uns: read_elem(group["uns"][keys.uns])})
            try:
                info = cls(adata, key, ranks=sparse_dataset(group["layers"][keys.ranks]))
            except InvalidTokensError as e:
                raise InvalidTokensError(f"{path}: {e}") from None
        except BaseException:
            if handle is not None:
                handle.close()
            raise
        info._file = handle
        info.path = path
        return info

    def close(self) -> None:
        """Close the file opened by :meth:`open`."""
        if self._file is not None:
            self._file.close()
            self._file = None
            self._ranks = None

    @property
    def ranks(self):
        """The rank layer (in memory or on disk)."""
        if self._ranks is not None:
            return self._ranks
        return self.adata.layers[self.keys.ranks]

    def encoded_cells(self) -> np.ndarray:
        """Positions of the cells that were encoded (length > 0)."""
        return np.flatnonzero(self.lengths > 0)

    def sequences(self, positions) -> list[np.ndarray]:
        """Token sequences (int32, special tokens included) of the cells at ``positions``, in that order.

        Cells that were not encoded give an empty array.
        """
        idx = np.asarray(positions, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            return []
        # Backed sparse datasets want sorted, unique row indices.
        unique, inverse = np.unique(idx, return_inverse=True)
        flat, offsets = self._assemble(_csr(self.ranks[unique]), self.lengths[unique])
        sequences = np.split(flat, offsets[1:-1])
        return [sequences[i] for i in inverse]

    def sequence_range(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokens of cells ``start..stop-1`` as ``(flat int32 tokens, offsets)``: one contiguous read."""
        return self._assemble(_csr(self.ranks[start:stop]), self.lengths[start:stop])

    def _assemble(self, rows: sp.csr_matrix, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return assemble_sequences(rows, lengths, self.var_token, self.n_special, self.cls_id, self.eos_id)

    def iter_rank_blocks(self, block: int = ROW_BLOCK) -> Iterator[tuple[int, sp.csr_matrix]]:
        """The rank layer in blocks of rows: ``(first row, CSR rows)``; only one block is in memory at a time."""
        n_obs = self.n_cells
        for start in range(0, n_obs, block):
            yield start, _csr(self.ranks[start : min(start + block, n_obs)])

    def var_occurrence(self) -> np.ndarray:
        """Number of cells whose encoding holds each ``.var`` gene."""
        counts = np.zeros(self.adata.n_vars, dtype=np.int64)
        for _, rows in self.iter_rank_blocks():
            counts += np.bincount(rows.indices[rows.data > 0], minlength=len(counts))
        return counts

    def token_occurrences(self, cells=None) -> np.ndarray:
        """How often each token id occurs in the sequences of ``cells`` (positions; default all cells)."""
        selected = np.ones(self.n_cells, dtype=bool) if cells is None else np.zeros(self.n_cells, dtype=bool)
        if cells is not None:
            selected[np.asarray(cells, dtype=np.int64)] = True
        counts = np.zeros(int(self.var_token.max(initial=-1)) + 1, dtype=np.int64)
        for start, rows in self.iter_rank_blocks():
            row_of_entry = np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr))
            keep = selected[start + row_of_entry] & (rows.data > 0)
            tokens = self.var_token[rows.indices[keep]]
            counts += np.bincount(tokens[tokens >= 0], minlength=len(counts))
        return counts

    def cells_holding(self, tokens, *, every: bool = False) -> np.ndarray:
        """Boolean mask of the encoded cells holding any (or, with ``every``, each) of the token ids ``tokens``."""
        tokens = np.atleast_1d(np.asarray(tokens, dtype=np.int64))
        mask = np.zeros(self.n_cells, dtype=bool)
        if every:
            mask[:] = self.lengths > 0
            for token in tokens:
                mask &= self.cells_holding([token])
            return mask
        wanted = np.isin(self.var_token, tokens) & (self.var_token >= 0)
        for start, rows in self.iter_rank_blocks():
            hits = wanted[rows.indices] & (rows.data > 0)
            row_of_entry = np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr))
            mask[start + np.unique(row_of_entry[hits])] = True
        return mask & (self.lengths > 0)

    def __repr__(self) -> str:
        return f"EncodingInfo({self.version}, {int((self.lengths > 0).sum())} of {self.n_cells} cells encoded)"


def assemble_sequences(
    rows: sp.csr_matrix, lengths: np.ndarray, var_token: np.ndarray, n_special: int, cls_id: int, eos_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Token sequences of rank-layer rows as ``(flat int32 tokens, offsets)``; cell i starts at ``offsets[i]``.

    Each gene's token goes to its rank position in one flat array (plus ``<cls>``/``<eos>`` around V2 cells).
    """
    n_genes = np.diff(rows.indptr)
    expected = np.where(lengths > 0, lengths - n_special, 0)
    if not np.array_equal(n_genes, expected):
        msg = (
            "The rank layer no longer matches the encoded lengths: genes holding ranks were removed after "
            "`rank_encode`. Re-run `sgf.pp.rank_encode` on the subset."
        )
        raise ValueError(msg)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.empty(offsets[-1], dtype=np.int32)
    cell_of_entry = np.repeat(np.arange(len(lengths)), n_genes)
    shift = 1 if n_special else 0
    flat[offsets[cell_of_entry] + rows.data.astype(np.int64) - 1 + shift] = var_token[rows.indices]
    if n_special:
        encoded = lengths > 0
        flat[offsets[:-1][encoded]] = cls_id
        flat[offsets[1:][encoded] - 1] = eos_id
    return flat, offsets


def _token_column(column, name: str, first_gene_id: int) -> np.ndarray:
    """The genes' token ids of ``.var`` column ``column`` as int64: -1 (no token) or gene ids, checked, not cast.

    Floating-point ids must be whole numbers and every id fit in int32 (the sequences' type): nothing is truncated
    or wrapped.
    """
    import pandas as pd

    integers = pd.api.types.is_integer_dtype(column.dtype)
    if not (integers or pd.api.types.is_float_dtype(column.dtype)):
        msg = f"{name} must hold integer token ids, got {column.dtype}; run `sgf.pp.rank_encode` again."
        raise InvalidTokensError(msg)
    if column.isna().any():
        msg = f"{name} holds missing token ids; genes without a token hold -1. Run `sgf.pp.rank_encode` again."
        raise InvalidTokensError(msg)
    values = column.to_numpy(dtype=np.int64 if integers else np.float64)
    if not integers:
        bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)))
        if len(bad):
            msg = f"{name} holds token id {values[bad[0]].item()}, which is not an integer."
            raise InvalidTokensError(msg)
    bad = np.flatnonzero(((values < first_gene_id) & (values != -1)) | (values > np.iinfo(np.int32).max))
    if len(bad):
        msg = (
            f"{name} holds token id {values[bad[0]].item()} (gene {column.index[bad[0]]!r}): gene token ids start "
            f"at {first_gene_id} (-1: no token) and fit in 32 bits. Run `sgf.pp.rank_encode` again."
        )
        raise InvalidTokensError(msg)
    return values.astype(np.int64)


def _csr(rows) -> sp.csr_matrix:
    return rows if isinstance(rows, sp.csr_matrix) else sp.csr_matrix(rows)
