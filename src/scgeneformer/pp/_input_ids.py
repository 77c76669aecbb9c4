"""``sgf.pp.input_ids``: token sequences of rank-encoded cells."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._data._anndata import resolve_adata
from .._data._encoding import EncodingInfo

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData
    from mudata import MuData


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

    Examples
    --------
    >>> sgf.pp.rank_encode(adata, vocabulary="V1")  # doctest: +SKIP
    >>> sgf.pp.input_ids(adata, [0])[0][:5]  # the first cell's five top-ranked genes  # doctest: +SKIP
    """
    info = EncodingInfo(resolve_adata(data, mod), key)
    idx = np.arange(info.n_cells) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    return info.sequences(idx)
