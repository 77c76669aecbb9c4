"""The data a tool receives (an AnnData, a MuData modality or a corpus) and access to its expression matrix.

A tool writes its results into :func:`resolve_adata` and reads the encoding from :func:`encoding_of`: for a corpus
these are its annotation AnnData and the corpus itself, which travels as the object the caller passed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from ._encoding import EncodingInfo

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from anndata import AnnData
    from mudata import MuData

    from ._corpus import Corpus


def resolve_adata(data: AnnData | MuData | Corpus, mod: str = "rna") -> AnnData:
    """The AnnData that results go into.

    ``data`` itself for an AnnData, its ``mod`` modality for a MuData, or a corpus's annotation AnnData
    (:attr:`~scgeneformer.Corpus.adata`).
    """
    from anndata import AnnData

    if isinstance(data, AnnData):
        return data
    from ._corpus import Corpus

    if isinstance(data, Corpus):
        return data.adata  # results of a corpus go into its annotation AnnData
    mods = getattr(data, "mod", None)
    if mods is not None:
        if mod not in mods:
            msg = f"MuData has no modality {mod!r}; available: {list(mods)}. Pass `mod=`."
            raise KeyError(msg)
        return mods[mod]
    msg = f"Expected an AnnData, a MuData or an sgf.Corpus (sgf.read_corpus), got {type(data).__name__}."
    raise TypeError(msg)


def show_in_mudata(
    data: AnnData | MuData | Corpus, mod: str = "rna", *, obs: Iterable[str] = (), var: Iterable[str] = ()
) -> None:
    """Make columns a tool wrote into a MuData's ``mod`` modality visible at the MuData level.

    Each ``.obs``/``.var`` column ``col`` becomes ``mdata.obs[f"{mod}:{col}"]`` (``.var`` alike), the name
    :meth:`mudata.MuData.update` gives it, so users need not call ``update()``. Only the columns named are
    copied: mudata 0.3's ``update()`` warns (FutureWarning) and re-reads every column, and its ``pull_obs``
    converts dtypes (a float column of whole numbers becomes integers) and warns from pandas. ``.obsm``,
    ``.varm``, ``.layers`` and ``.uns`` stay in the modality, as with mudata (``mdata["rna"].obsm``). Nothing
    happens for an AnnData or a corpus.
    """
    mods = getattr(data, "mod", None)
    if mods is None or mod not in mods:
        return
    adata = mods[mod]
    for attr, columns in (("obs", obs), ("var", var)):
        frame, names = getattr(adata, attr), getattr(data, f"{attr}_names")
        positions = _positions_in_mudata(data, mod, attr, getattr(adata, f"{attr}_names"), names)
        target = getattr(data, attr)
        for column in columns:
            values = frame[column]
            if (positions >= 0).all():
                aligned = values.iloc[positions].set_axis(names)
            else:  # cells (genes) of other modalities only: missing values, integers and booleans stay so
                if values.dtype.kind in "iub":
                    values = values.astype("Int64" if values.dtype.kind in "iu" else "boolean")
                aligned = values.reset_index(drop=True).reindex(positions).set_axis(names)
            target[f"{mod}:{column}"] = aligned


def _positions_in_mudata(data: MuData, mod: str, attr: str, own_names, names) -> np.ndarray:
    """For each MuData row (cell or gene), its position in the modality, -1 where it has none."""
    maps = getattr(data, f"{attr}map", None)  # kept by mudata since its construction or last update()
    mapping = maps.get(mod) if maps is not None else None
    if mapping is not None and len(mapping) == len(names):
        return np.asarray(mapping, dtype=np.int64).ravel() - 1  # mudata's map counts from 1; 0: absent
    return np.asarray(own_names.get_indexer(names), dtype=np.int64)


def encoding_of(data: AnnData | MuData | Corpus, key: str = "geneformer", mod: str = "rna") -> EncodingInfo | Corpus:
    """The encoding the models read from ``data``.

    A corpus is its own encoding; an AnnData (or the ``mod`` modality of a MuData) gives its :class:`EncodingInfo`
    for ``key_added=key``. Callers pass the data they received, not :func:`resolve_adata`'s result: a corpus's
    annotation AnnData holds no encoding.
    """
    from ._corpus import Corpus

    if isinstance(data, Corpus):
        if data.key != key:
            msg = f"The corpus was read with key={data.key!r}, not {key!r}: pass encoding_key={data.key!r}."
            raise KeyError(msg)
        return data
    return EncodingInfo(resolve_adata(data, mod), key)


def get_matrix(adata: AnnData, layer: str | None):
    """The expression matrix (``X`` or a layer) without loading it."""
    if layer is None:
        if adata.X is None:
            msg = "adata.X is empty; pass `layer=` with the raw counts."
            raise ValueError(msg)
        return adata.X
    if layer not in adata.layers:
        msg = f"Layer {layer!r} not found; available layers: {list(adata.layers)}."
        raise KeyError(msg)
    return adata.layers[layer]


def iter_row_chunks(X, chunk_size: int) -> Iterator[tuple[int, int, sp.csr_matrix]]:
    """Yield ``(start, stop, csr_chunk)`` over rows of an in-memory, backed (h5py/zarr) or dask matrix.

    Only one chunk is in memory at a time; dense and CSC chunks are converted to CSR.
    """
    n_obs = X.shape[0]
    for start in range(0, n_obs, chunk_size):
        stop = min(start + chunk_size, n_obs)
        chunk = X[start:stop]
        if hasattr(chunk, "compute"):  # dask
            chunk = chunk.compute()
        if sp.issparse(chunk):
            chunk = sp.csr_matrix(chunk)
        else:
            chunk = sp.csr_matrix(np.asarray(chunk))
        yield start, stop, chunk


def cell_mask(adata: AnnData, cells, *, argument: str = "cells") -> np.ndarray:
    """Boolean mask over cells from a cell selection, as every tool accepts it.

    ``cells`` may be a boolean mask over cells; the name of a boolean ``.obs`` column (nullable booleans: missing
    values select nothing); a list of obs names; or ``{obs column: allowed value(s)}`` (the reference's
    ``filter_data``). Anything else, e.g. a column of strings, is refused rather than guessed.
    """
    import pandas as pd

    if isinstance(cells, dict):
        mask = np.ones(adata.n_obs, dtype=bool)
        for column, allowed in cells.items():
            if column not in adata.obs.columns:
                msg = (
                    f"{argument} filter column {column!r} is not an .obs column; available: {list(adata.obs.columns)}."
                )
                raise KeyError(msg)
            allowed = [allowed] if isinstance(allowed, str) or not np.iterable(allowed) else list(allowed)
            mask &= adata.obs[column].isin(allowed).to_numpy()
        return mask
    if isinstance(cells, str):
        if cells not in adata.obs.columns:
            msg = f"{argument} {cells!r} is not an .obs column; available: {list(adata.obs.columns)}."
            raise KeyError(msg)
        column = adata.obs[cells]
        if not pd.api.types.is_bool_dtype(column.dtype):
            msg = (
                f"{argument}={cells!r} names an .obs column of dtype {column.dtype}, not a boolean one; select cells "
                f"with a boolean column, e.g. `adata.obs[{cells!r}] == 'yes'`, or with {{{cells!r}: [values]}}."
            )
            raise TypeError(msg)
        return column.fillna(False).to_numpy(dtype=bool)
    values = np.asarray(cells)
    if values.size == 0:
        msg = f"{argument} is empty: it selects no cells."
        raise ValueError(msg)
    if values.dtype == bool:
        if values.shape != (adata.n_obs,):
            msg = f"A boolean {argument} mask needs one value per cell ({adata.n_obs}), got shape {values.shape}."
            raise ValueError(msg)
        return values
    if values.ndim != 1 or values.dtype.kind not in "UO":
        msg = (
            f"{argument} must be a boolean mask, a boolean .obs column name, a list of obs names or "
            f"{{obs column: values}}, got {type(cells).__name__} of dtype {values.dtype}."
        )
        raise TypeError(msg)
    positions = adata.obs_names.get_indexer(values.astype(str))
    if (positions < 0).any():
        msg = f"Unknown cells in {argument}: {list(values[positions < 0][:10])}."
        raise KeyError(msg)
    mask = np.zeros(adata.n_obs, dtype=bool)
    mask[positions] = True
    return mask


def writable_names(names) -> list[str]:
    """Names usable as keys and column names in ``.h5ad`` and ``.zarr`` files, one per name, all different.

    h5ad and zarr refuse ``/`` in keys; it becomes ``_`` (``"T/NK"`` → ``"T_NK"``). Names that then coincide get a
    numeric suffix. The original names are kept as values wherever results refer to them.
    """
    out: list[str] = []
    for name in names:
        key = str(name).replace("/", "_")
        candidate, n = key, 2
        while candidate in out:
            candidate, n = f"{key}_{n}", n + 1
        out.append(candidate)
    return out


def copy_data(data: AnnData | MuData) -> AnnData | MuData:
    """A copy of an AnnData or MuData (for ``copy=True``).

    Copying a MuData makes mudata warn that a future version will stop pulling modality columns on update; a copy
    keeps the columns it has, so that warning says nothing about it and is not shown.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"From 0\.4 \.update\(\)", category=FutureWarning)
        return data.copy()
