"""``sgf.pp.rank_encode``: Geneformer's rank-value encoding of an AnnData, stored in the AnnData itself."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from .._data._anndata import copy_data, get_matrix, iter_row_chunks, resolve_adata, show_in_mudata
from .._data._encoding import encoding_keys
from .._settings import logger
from .._utils._parallel import default_n_jobs, ordered_parallel_map
from .._utils._text import counted
from ..vocabulary import Vocabulary, get_vocabulary
from ._gene_plan import GenePlan
from ._orthologs import TITLE_CASE, looks_like_mouse
from ._ranking import rank_chunk

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

#: Share of counts in vocabulary genes below which a warning suggests checking the gene identifiers.
LOW_MAPPED_SHARE = 0.5


def rank_encode(
    data: AnnData | MuData,
    *,
    vocabulary: str | Vocabulary | os.PathLike = "V2",
    gene_id_key: str | None = None,
    layer: str | None = None,
    n_counts_key: str | None = None,
    filter_key: str | None = None,
    key_added: str = "geneformer",
    mod: str = "rna",
    allow_non_integer: bool = False,
    allow_gene_subset: bool = False,
    reference_quirks: bool = False,
    chunk_size: int = 2048,
    n_jobs: int | None = None,
    ranks_file: str | os.PathLike | None = None,
    copy: bool = False,
) -> AnnData | MuData | None:
    """Rank-value encode cells for Geneformer.

    Each cell's raw counts are normalized to ``count / n_counts * 10,000 / median``, where ``median`` is the gene's
    non-zero median over the pretraining corpus; the expressed vocabulary genes are ranked by descending normalized
    value and the top ``vocabulary.max_genes`` are kept (2,048 in V1; 4,094 in V2, which wraps every cell in
    ``<cls>`` … ``<eos>``). Use :func:`~scgeneformer.pp.input_ids` to get the token sequences.

    Parameters
    ----------
    data
        Raw counts: an :class:`~anndata.AnnData` (in memory, backed or dask-backed) or a :class:`~mudata.MuData`
        whose ``mod`` modality holds them.
    vocabulary
        ``"V1"`` (Geneformer-V1-10M and other 2,048-input models), ``"V2"`` (V2-104M, V2-316M and other 4,096-input
        models), a :class:`~scgeneformer.Vocabulary` or a folder holding one version's four upstream dictionary files.
    gene_id_key
        ``.var`` column with the gene identifiers; ``None`` uses ``var_names``. Ensembl IDs (with or without version
        suffix, any case) and gene symbols are accepted. Several columns mapping to one gene are summed.
    layer
        Layer with the raw counts; ``None`` uses ``X``.
    n_counts_key
        ``.obs`` column with each cell's total counts. By default the total over *all* genes of the matrix is used.
        The two differ when genes were removed before encoding (e.g. after selecting highly variable genes) or when
        the counts were ambient-corrected: pass the original totals here to reproduce an encoding made on the
        unfiltered matrix, as the reference (which always reads ``obs["n_counts"]``) does.
    filter_key
        Boolean (or 0/1) ``.obs`` column; only cells where it is true are encoded, like the reference's
        ``filter_pass``.
    key_added
        Prefix of the keys written (see below).
    mod
        Modality used when ``data`` is a MuData.
    allow_non_integer
        Accept non-integer values (e.g. corrected or estimated counts). Without it they are refused, because
        normalized or log-transformed data silently give wrong ranks.
    allow_gene_subset
        Accept data that were subset to highly variable genes (``sc.pp.highly_variable_genes(..., subset=True)``:
        every gene of ``var["highly_variable"]`` is True). Without it such data are refused: ranking a cell among a
        few thousand selected genes instead of its whole transcriptome gives encodings unlike anything the model was
        trained on. Encode the full gene set instead (``adata.raw.to_adata()``, or the counts before subsetting);
        pass ``True`` only for data that really measure few genes (e.g. a targeted panel).
    reference_quirks
        Reproduce the reference tokenizer exactly, bugs included: identifiers mapped only through the Ensembl
        mapping (version-suffixed IDs dropped, the string ``"nan"`` taken as a gene), duplicated genes summed only
        when the reference's collapse check triggers (never in V1), and its float32 normalization order. The
        default maps symbols and versioned IDs, always sums duplicates, computes in float64 and breaks exact ties by
        token id.
    chunk_size
        Cells read and encoded at a time; memory use does not grow with the number of cells.
    n_jobs
        Threads encoding chunks in parallel; ``None`` uses every available core.
    ranks_file
        Backed AnnData only: the HDF5 file receiving the rank layer, which then stays on disk so memory does not
        grow with the number of cells. By default the backing file itself when it was opened with ``backed="r+"``
        (the other keys are then written into the file too, which reopens encoded; no ``adata.write()`` is needed),
        else ``<file>.<key_added>_ranks.h5`` beside it (a read-only file is never modified).
    copy
        Return an encoded copy instead of writing into ``data``.

    Returns
    -------
    ``None``, or the encoded copy when ``copy=True``. Written keys, with ``key_added="geneformer"``:

    ``layers["geneformer_ranks"]``
        Sparse int16 matrix: the 1-based rank of each kept gene in its cell, 0 elsewhere (6 bytes per kept gene).
        For a backed AnnData it stays on disk (see ``ranks_file``).
    ``var["geneformer_token"]``
        Token id of each gene, -1 outside the vocabulary.
    ``obs["geneformer_n_tokens"]``
        Sequence length including special tokens; 0 for cells that were filtered out or express no vocabulary gene.
    ``uns["geneformer"]``
        Parameters and mapping statistics.

    Examples
    --------
    >>> adata = sgf.datasets.pbmc_example()
    >>> sgf.pp.rank_encode(adata, vocabulary="V1", gene_id_key="ensembl_id")  # doctest: +SKIP
    >>> adata.obs["geneformer_n_tokens"].median()  # doctest: +SKIP
    """
    start_time = time.perf_counter()
    if copy:
        data = copy_data(data)
    adata = resolve_adata(data, mod)
    if adata.is_view:
        msg = "rank_encode cannot write into a view of an AnnData; call `.copy()` on it first."
        raise ValueError(msg)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer) or chunk_size < 1:
        msg = f"chunk_size must be a positive number of cells, got {chunk_size!r}."
        raise ValueError(msg)
    if adata.n_obs == 0 or adata.n_vars == 0:
        msg = (
            f"The data have {counted(adata.n_obs, 'cell')} and {counted(adata.n_vars, 'gene')}: there is nothing to "
            "encode."
        )
        raise ValueError(msg)
    vocab = get_vocabulary(vocabulary)
    matrix = get_matrix(adata, layer)
    if getattr(matrix, "dtype", None) == np.float16:
        msg = (
            "The count matrix is float16, which cannot hold counts above 2,048 exactly; convert it first, e.g. "
            "`adata.X = adata.X.astype(np.float32)`."
        )
        raise TypeError(msg)
    if not allow_gene_subset:
        _refuse_gene_subset(adata)
    gene_ids = _gene_ids(adata, gene_id_key)
    plan = GenePlan.build(gene_ids, vocab, reference_quirks=reference_quirks)
    n_mapped = int((plan.var_token >= 0).sum())
    mouse = looks_like_mouse(gene_ids)
    mouse_hint = (
        "They look like mouse genes, and Geneformer knows human genes only: map them first with "
        "`sgf.pp.map_orthologs(adata, species='mouse')`, then encode with `gene_id_key='human_ensembl_id'`."
    )
    if n_mapped == 0:
        example = ", ".join(map(str, list(gene_ids[:3])))
        msg = f"None of the {adata.n_vars} gene identifiers (e.g. {example}) is in the {vocab.version} vocabulary. " + (
            mouse_hint if mouse else "Pass `gene_id_key=` naming a .var column of human Ensembl IDs or symbols."
        )
        raise ValueError(msg)
    if mouse:
        examples = ", ".join(str(g) for g in gene_ids[:200] if TITLE_CASE.match(str(g)))[:60]
        warnings.warn(
            f"The gene identifiers look like mouse symbols (e.g. {examples}); upper-casing them matches some human "
            f"genes by name only. {mouse_hint}",
            UserWarning,
            stacklevel=2,
        )
    user_n_counts = None
    if n_counts_key is not None:
        user_n_counts = _obs_column(
            adata, n_counts_key, argument="n_counts_key", kinds="iuf", expected="numeric total counts"
        )
    passes_filter = np.ones(adata.n_obs, dtype=bool)
    if filter_key is not None:
        passes_filter = _filter_flags(adata, filter_key)
    if reference_quirks and user_n_counts is None:
        logger.info("reference_quirks without n_counts_key: using the total counts over all genes as n_counts.")

    def encode_chunk(item):
        start, stop, chunk = item
        _validate_counts(chunk, adata, allow_non_integer=allow_non_integer)
        row_totals = np.asarray(chunk.sum(axis=1, dtype=np.float64)).ravel()
        n_counts = user_n_counts[start:stop] if user_n_counts is not None else row_totals
        selected = passes_filter[start:stop]
        if not selected.all():
            chunk = sp.csr_matrix(chunk.multiply(selected[:, None]))
        ranked = rank_chunk(chunk, n_counts, plan, reference_quirks=reference_quirks)
        _check_n_counts(n_counts, ranked.n_genes_untruncated > 0, start, adata)
        ranks = _kept_ranks(ranked, plan, vocab.max_genes, n_vars=adata.n_vars)
        return start, stop, ranks, ranked.n_genes_untruncated, row_totals[selected].sum(), ranked.counts_in_vocabulary

    sink = _RankSink.for_adata(
        adata, matrix, encoding_keys(key_added).ranks, ranks_file=ranks_file, max_genes=vocab.max_genes
    )
    lengths = np.zeros(adata.n_obs, dtype=np.int32)
    n_truncated = 0
    total_counts = counts_in_vocabulary = 0.0
    chunks = iter_row_chunks(matrix, chunk_size)
    try:
        for start, stop, ranks, n_genes, chunk_total, chunk_in_vocabulary in ordered_parallel_map(
            encode_chunk, chunks, n_jobs or default_n_jobs()
        ):
            n_kept = np.minimum(n_genes, vocab.max_genes)
            lengths[start:stop] = np.where(n_kept > 0, n_kept + vocab.n_special, 0)
            n_truncated += int((n_genes > vocab.max_genes).sum())
            total_counts += chunk_total
            counts_in_vocabulary += chunk_in_vocabulary
            sink.append(ranks)
    except BaseException:
        sink.discard()
        raise

    encoded = lengths > 0
    n_empty = int((passes_filter & ~encoded).sum())
    mapped_share = counts_in_vocabulary / total_counts if total_counts > 0 else 0.0
    if not encoded.any():
        sink.discard()
        msg = "No cell expresses any vocabulary gene; check `gene_id_key` and that the matrix holds raw counts."
        raise ValueError(msg)
    _log_summary(vocab, plan, adata.n_vars, n_mapped, mapped_share, n_empty, passes_filter, n_truncated)

    keys = encoding_keys(key_added)
    adata.layers[keys.ranks] = sink.finish()
    adata.var[keys.token] = plan.var_token
    adata.obs[keys.n_tokens] = lengths
    adata.uns[keys.uns] = {
        "params": {
            "vocabulary": vocab.version,
            "vocabulary_source": vocab.source,
            "input_size": vocab.input_size,
            "pad_id": vocab.pad_id,
            "mask_id": vocab.mask_id,
            "cls_id": -1 if vocab.cls_id is None else vocab.cls_id,
            "eos_id": -1 if vocab.eos_id is None else vocab.eos_id,
            "first_gene_id": 1 + max(vocab.special_ids),
            "gene_id_key": gene_id_key or "var_names",
            "layer": layer or "X",
            "n_counts_key": n_counts_key or "total counts over all genes",
            "filter_key": filter_key or "",
            "reference_quirks": reference_quirks,
            "allow_non_integer": allow_non_integer,
        },
        "n_genes_in_vocabulary": n_mapped,
        "share_of_counts_in_vocabulary": mapped_share,
        "n_cells_encoded": int(encoded.sum()),
        "n_cells_empty": n_empty,
        "n_cells_filtered": int((~passes_filter).sum()),
        "n_cells_truncated": n_truncated,
    }
    show_in_mudata(data, mod, obs=[keys.n_tokens], var=[keys.token])
    if sink.in_backing_file:
        _persist_in_backing_file(adata)
    logger.info("rank_encode: %s in %.2f s", counted(adata.n_obs, "cell"), time.perf_counter() - start_time)
    return data if copy else None


def _persist_in_backing_file(adata: AnnData) -> None:
    """Write obs, var and uns into the file of an AnnData opened with ``backed="r+"``, beside its rank layer.

    The file is then encoded as it is: reopening it (backed or in memory) gives the encoded data. anndata's
    ``adata.write()`` is not needed (and cannot rewrite a layer that is read from the same file).
    """
    from anndata.io import write_elem

    handle = adata.file._file
    for name, value in (("obs", adata.obs), ("var", adata.var), ("uns", dict(adata.uns))):
        write_elem(handle, name, value)
    handle.flush()
    logger.info("rank_encode: the encoding was written into %s", adata.filename)


def _filter_flags(adata: AnnData, key: str) -> np.ndarray:
    """Cells passing ``obs[key]``: booleans (nullable ones: missing fails) or 0/1 numbers."""
    import pandas as pd

    if key not in adata.obs.columns:
        msg = f"filter_key {key!r} is not an .obs column; available: {list(adata.obs.columns)}."
        raise KeyError(msg)
    column = adata.obs[key]
    if pd.api.types.is_bool_dtype(column.dtype):
        return column.fillna(False).to_numpy(dtype=bool)
    if pd.api.types.is_numeric_dtype(column.dtype) and not isinstance(column.dtype, pd.CategoricalDtype):
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        if not np.isin(values[~np.isnan(values)], (0, 1)).all():
            msg = f"filter_key column obs[{key!r}] must hold booleans or 0/1, found other numbers."
            raise ValueError(msg)
        return values == 1
    msg = (
        f"filter_key column obs[{key!r}] has dtype {column.dtype}; it must be boolean (or 0/1). Strings such as "
        f"'True'/'False' are not converted for you: pass e.g. `adata.obs[{key!r}] = adata.obs[{key!r}] == 'True'`."
    )
    raise TypeError(msg)


def _kept_ranks(ranked, plan: GenePlan, max_genes: int, *, n_vars: int) -> sp.csr_matrix:
    """1-based ranks of the kept genes, on the cells × genes grid (at each group's first column)."""
    grouped = ranked.grouped
    kept = np.flatnonzero(ranked.rank < max_genes)
    indptr = np.searchsorted(kept, grouped.indptr)
    columns = plan.group_var.astype(np.int32)[grouped.indices[kept]]
    return sp.csr_matrix(((ranked.rank[kept] + 1).astype(np.int16), columns, indptr), shape=(grouped.shape[0], n_vars))


def _gene_ids(adata: AnnData, gene_id_key: str | None) -> np.ndarray:
    if gene_id_key is None:
        return adata.var_names.to_numpy(dtype=object)
    if gene_id_key not in adata.var.columns:
        msg = f"gene_id_key {gene_id_key!r} is not a .var column; available: {list(adata.var.columns)}."
        raise KeyError(msg)
    return adata.var[gene_id_key].to_numpy(dtype=object)


def _obs_column(adata: AnnData, key: str, *, argument: str, kinds: str, expected: str) -> np.ndarray:
    if key not in adata.obs.columns:
        msg = f"{argument} {key!r} is not an .obs column; available: {list(adata.obs.columns)}."
        raise KeyError(msg)
    values = adata.obs[key].to_numpy()
    if values.dtype.kind not in kinds:
        msg = f"obs[{key!r}] must be {expected}, got dtype {values.dtype}."
        raise TypeError(msg)
    return values


def _refuse_gene_subset(adata: AnnData) -> None:
    """Refuse data subset to highly variable genes: scanpy leaves ``var["highly_variable"]`` all True after it."""
    flags = adata.var.get("highly_variable")
    if flags is None or adata.n_vars == 0 or not bool(np.asarray(flags, dtype=bool).all()):
        return
    raw_hint = (
        f" `adata.raw` holds {adata.raw.n_vars:,} genes: encode `adata.raw.to_adata()` (raw counts) instead."
        if adata.raw is not None and adata.raw.n_vars > adata.n_vars
        else " Encode the raw counts of all genes, e.g. from a copy taken before subsetting or a counts layer of it."
    )
    msg = (
        f"The data hold only {adata.n_vars:,} genes, all marked highly variable: they were subset to highly variable "
        "genes (`sc.pp.highly_variable_genes(..., subset=True)`). Geneformer ranks each cell's whole transcriptome; "
        f"ranks among selected genes are meaningless to it.{raw_hint} If the data really measure only these genes "
        "(e.g. a targeted panel), pass `allow_gene_subset=True`."
    )
    raise ValueError(msg)


def _validate_counts(chunk: sp.csr_matrix, adata: AnnData, *, allow_non_integer: bool) -> None:
    values = chunk.data
    if values.dtype.kind not in "iuf":
        msg = f"Expression values must be numeric, got dtype {values.dtype}."
        raise TypeError(msg)
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        msg = "The count matrix contains NaN or infinite values; pass raw counts."
        raise ValueError(msg)
    if values.size and values.min() < 0:
        msg = "The count matrix contains negative values (scaled or corrected data?); pass raw counts."
        raise ValueError(msg)
    if allow_non_integer or values.dtype.kind != "f" or not values.size:
        return
    if np.any(values != np.round(values)):
        looks_log = "log1p" in adata.uns or values.max() < 20
        hint = (
            "It looks log-normalized: pass the raw counts instead, e.g. `layer='counts'` or `adata.raw.to_adata()`."
            if looks_log
            else "Pass raw counts, or `allow_non_integer=True` if the values are genuine non-integer counts."
        )
        msg = f"The count matrix holds non-integer values. {hint}"
        raise ValueError(msg)


def _check_n_counts(n_counts: np.ndarray, has_genes: np.ndarray, start: int, adata: AnnData) -> None:
    bad = has_genes & ~(np.isfinite(n_counts) & (n_counts > 0))
    if bad.any():
        cells = adata.obs_names[start + np.flatnonzero(bad)[:3]].tolist()
        msg = f"n_counts must be positive and finite for cells with counts; invalid for {cells}."
        raise ValueError(msg)


def _log_summary(vocab, plan, n_vars, n_mapped, mapped_share, n_empty, passes_filter, n_truncated) -> None:
    logger.info(
        "%d of %d genes (%d tokens) are in the %s vocabulary, holding %.1f%% of the counts.",
        n_mapped,
        n_vars,
        len(np.unique(plan.group_token)),
        vocab.version,
        100 * mapped_share,
    )
    if mapped_share < LOW_MAPPED_SHARE:
        warnings.warn(
            f"Only {100 * mapped_share:.1f}% of the counts are in genes of the {vocab.version} vocabulary; check that "
            "`gene_id_key` names human Ensembl IDs or symbols and that all genes (no feature selection) are present.",
            UserWarning,
            stacklevel=3,
        )
    if n_empty:
        warnings.warn(
            f"{counted(n_empty, 'cell')} express{'' if n_empty != 1 else 'es'} no vocabulary gene and "
            f"{'were' if n_empty != 1 else 'was'} not encoded (n_tokens = 0).",
            UserWarning,
            stacklevel=3,
        )
    if (~passes_filter).any():
        n_excluded = int((~passes_filter).sum())
        logger.info("%s excluded by filter_key.", counted(n_excluded, "cell was", "cells were"))
    if n_truncated:
        logger.info("%s truncated to %d genes.", counted(n_truncated, "cell was", "cells were"), vocab.max_genes)


class _RankSink:
    """Collects the rank matrix chunk by chunk, in memory or in an HDF5 file.

    In memory, chunks are copied into arrays sized by an upper bound of the kept entries (the matrix's stored
    entries): pages are only touched when written, and no chunk outlives its copy, so memory is the result plus one
    chunk. On disk (backed AnnData), chunks are appended to a sparse dataset that only becomes the final layer when
    the whole encoding succeeded.
    """

    def __init__(self, n_vars: int, *, capacity: int | None = None, group=None, final_name: str | None = None) -> None:
        self.n_vars = n_vars
        self.group = group
        self.final_name = final_name
        self.name = None if final_name is None else f"{final_name}__sgf_partial"
        self.dataset = None
        self.parts: list[sp.csr_matrix] = []
        self.capacity = capacity
        self.in_backing_file = False
        self.side_file: tuple[Path, Path] | None = None
        if capacity is not None:
            self.data = np.empty(capacity, dtype=np.int16)
            self.indices = np.empty(capacity, dtype=np.int32)
            self.indptr = [np.zeros(1, dtype=np.int64)]
            self.nnz = 0

    @classmethod
    def for_adata(cls, adata: AnnData, matrix, name: str, *, ranks_file=None, max_genes: int) -> _RankSink:
        if adata.isbacked:
            import h5py

            if ranks_file is None and getattr(adata.file, "_filemode", None) == "r+":
                sink = cls(adata.n_vars, group=adata.file._file, final_name=f"layers/{name}")
                sink.in_backing_file = True
                return sink
            path = Path(ranks_file) if ranks_file is not None else Path(adata.filename).with_suffix(f".{name}.h5")
            # Written under a temporary name and renamed once complete (see finish).
            temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            try:
                handle = h5py.File(temporary, "w")
            except OSError as e:
                msg = (
                    f"Cannot write the rank layer of this backed AnnData beside {path} ({e}). Open the file with "
                    "backed='r+' to store it inside, or pass `ranks_file=` with a writable path."
                )
                raise OSError(msg) from e
            logger.info("rank layer of the backed AnnData is written to %s", path)
            sink = cls(adata.n_vars, group=handle, final_name=name)
            sink.side_file = (temporary, path)
            return sink
        upper_bound = min(_stored_entries(matrix), adata.n_obs * max_genes)
        return cls(adata.n_vars, capacity=upper_bound if upper_bound < 2**31 else None)

    def append(self, chunk: sp.csr_matrix) -> None:
        if self.group is not None:
            self._append_to_file(chunk)
        elif self.capacity is None or self.nnz + chunk.nnz > self.capacity:
            self.parts.append(chunk)
        else:
            self.data[self.nnz : self.nnz + chunk.nnz] = chunk.data
            self.indices[self.nnz : self.nnz + chunk.nnz] = chunk.indices
            self.indptr.append(chunk.indptr[1:] + self.nnz)
            self.nnz += chunk.nnz

    def _append_to_file(self, chunk: sp.csr_matrix) -> None:
        from anndata.io import sparse_dataset, write_elem

        if self.dataset is None:
            if self.name in self.group:
                del self.group[self.name]
            write_elem(self.group, self.name, chunk)
            self.dataset = sparse_dataset(self.group[self.name])
        else:
            self.dataset.append(chunk)

    def discard(self) -> None:
        if self.side_file is not None:
            self.group.close()
            self.side_file[0].unlink(missing_ok=True)
        elif self.group is not None and self.name in self.group:
            del self.group[self.name]

    def finish(self):
        if self.group is not None:
            from anndata.io import sparse_dataset

            # Move the finished matrix to its final place only now, so a failed run leaves the file as it was.
            if self.final_name in self.group:
                del self.group[self.final_name]
            self.group.move(self.name, self.final_name)
            if self.side_file is not None:
                import h5py

                temporary, path = self.side_file
                self.group.close()
                os.replace(temporary, path)
                self.group = h5py.File(path, "r")
            return sparse_dataset(self.group[self.final_name])
        if self.capacity is None or self.parts:
            return _stack_rows(self._as_parts(), self.n_vars)
        indptr = np.concatenate(self.indptr)
        # Views into the preallocated arrays: the untouched tail was never backed by memory.
        return sp.csr_matrix(
            (self.data[: self.nnz], self.indices[: self.nnz], indptr), shape=(len(indptr) - 1, self.n_vars)
        )

    def _as_parts(self) -> list[sp.csr_matrix]:
        if self.capacity is None or self.nnz == 0:
            return self.parts
        indptr = np.concatenate(self.indptr)
        head = sp.csr_matrix(
            (self.data[: self.nnz], self.indices[: self.nnz], indptr), shape=(len(indptr) - 1, self.n_vars)
        )
        return [head, *self.parts]


def _stored_entries(matrix) -> int:
    """Stored entries of a sparse (in-memory or backed) matrix; the full size for anything else."""
    if sp.issparse(matrix):
        return int(matrix.nnz)
    group = getattr(matrix, "group", None)
    if group is not None and "indptr" in group:
        return int(group["indptr"][-1])
    return int(np.prod(matrix.shape))


def _stack_rows(parts: list[sp.csr_matrix], n_vars: int) -> sp.csr_matrix:
    """Stack CSR row blocks, releasing each block once copied."""
    nnz = sum(part.nnz for part in parts)
    n_rows = sum(part.shape[0] for part in parts)
    data = np.empty(nnz, dtype=np.int16)
    indices = np.empty(nnz, dtype=np.int32)
    indptr = np.empty(n_rows + 1, dtype=np.int64)
    indptr[0] = row = offset = 0
    while parts:
        part = parts.pop(0)
        data[offset : offset + part.nnz] = part.data
        indices[offset : offset + part.nnz] = part.indices
        indptr[row + 1 : row + part.shape[0] + 1] = part.indptr[1:] + offset
        row, offset = row + part.shape[0], offset + part.nnz
    return sp.csr_matrix((data, indices, indptr), shape=(n_rows, n_vars))
