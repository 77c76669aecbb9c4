"""``sgf.pp.input_ids``: token sequences of rank-encoded cells."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from .._data import resolve_adata
from ._rank_encode import encoding_keys

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData
    from mudata import MuData


class EncodingInfo:
    """What :func:`~scgeneformer.pp.rank_encode` stored in an AnnData, checked for consistency."""

    def __init__(self, adata: AnnData, key: str = "geneformer") -> None:
        keys = encoding_keys(key)
        missing = [
            f"{where}[{name!r}]"
            for where, mapping, name in (
                ("uns", adata.uns, keys["uns"]),
                ("layers", adata.layers, keys["ranks"]),
                ("var", adata.var, keys["token"]),
                ("obs", adata.obs, keys["n_tokens"]),
            )
            if name not in mapping
        ]
        if missing:
            msg = f"The data are not rank-encoded (missing {', '.join(missing)}); run `sgf.pp.rank_encode` first."
            raise KeyError(msg)
        self.adata = adata
        self.keys = keys
        params = adata.uns[keys["uns"]]["params"]
        self.version: str = str(params["vocabulary"])
        self.input_size = int(params["input_size"])
        self.cls_id = int(params["cls_id"])
        self.eos_id = int(params["eos_id"])
        self.var_token = adata.var[keys["token"]].to_numpy(dtype=np.int64)
        self.lengths = adata.obs[keys["n_tokens"]].to_numpy(dtype=np.int64)

    @property
    def n_special(self) -> int:
        return 2 if self.cls_id >= 0 else 0

    @property
    def ranks(self):
        return self.adata.layers[self.keys["ranks"]]


def input_ids(
    data: AnnData | MuData,
    indices: Sequence[int] | np.ndarray | None = None,
    *,
    key: str = "geneformer",
    mod: str = "rna",
) -> list[np.ndarray]:
    """Token sequences of rank-encoded cells, special tokens included.

    Parameters
    ----------
    data
        AnnData (or MuData) encoded by :func:`~scgeneformer.pp.rank_encode`.
    indices
        Integer positions of the cells; ``None`` for all cells. Sequences are returned in this order.
    key
        The ``key_added`` used when encoding.
    mod
        Modality used when ``data`` is a MuData.

    Returns
    -------
    One int32 array of token ids per cell. Cells that were not encoded (filtered out, or without vocabulary genes)
    give an empty array.
    """
    adata = resolve_adata(data, mod)
    info = EncodingInfo(adata, key)
    idx = np.arange(adata.n_obs) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    return sequences_for(info, idx)


def sequences_for(info: EncodingInfo, idx: np.ndarray) -> list[np.ndarray]:
    """Token sequences of the cells at positions ``idx`` (the code path shared with the model's data loader)."""
    if idx.size == 0:
        return []
    # Backed sparse datasets want sorted, unique row indices.
    unique, inverse = np.unique(idx, return_inverse=True)
    rows = info.ranks[unique]
    rows = rows if isinstance(rows, sp.csr_matrix) else sp.csr_matrix(rows)
    n_genes = np.diff(rows.indptr)
    lengths = info.lengths[unique]
    expected = np.where(lengths > 0, lengths - info.n_special, 0)
    if not np.array_equal(n_genes, expected):
        msg = (
            "The rank layer no longer matches the encoded lengths: genes holding ranks were removed after "
            "`rank_encode`. Re-run `sgf.pp.rank_encode` on the subset."
        )
        raise ValueError(msg)
    # Scatter each gene's token to its rank position in one flat array.
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat = np.empty(offsets[-1], dtype=np.int32)
    cell_of_entry = np.repeat(np.arange(len(unique)), n_genes)
    shift = 1 if info.n_special else 0
    flat[offsets[cell_of_entry] + rows.data.astype(np.int64) - 1 + shift] = info.var_token[rows.indices]
    if info.n_special:
        encoded = lengths > 0
        flat[offsets[:-1][encoded]] = info.cls_id
        flat[offsets[1:][encoded] - 1] = info.eos_id
    sequences = np.split(flat, offsets[1:-1])
    return [sequences[i] for i in inverse]
