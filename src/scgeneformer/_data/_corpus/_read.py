"""``sgf.read_corpus``: the kind of corpus a source is (encoded AnnData files or a tokenized dataset), opened."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ._base import Corpus
from ._encoded_files import EncodedFiles, is_anndata
from ._tables import table_files
from ._tokenized import TokenizedDataset


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
        if path.suffix in (".parquet", ".arrow") or (path.is_dir() and table_files(path)):
            if vocabulary is None:
                msg = "A tokenized dataset needs `vocabulary=`: the vocabulary it was tokenized with."
                raise ValueError(msg)
            return TokenizedDataset(path, vocabulary, cell_names=cell_names, key=key)
        source = [path]
    if is_anndata(source):
        source = [source]
    if not isinstance(source, Sequence):
        msg = (
            "read_corpus takes a path, a list of paths or AnnData objects, an AnnCollection or a Parquet dataset; "
            f"got {type(source).__name__}."
        )
        raise TypeError(msg)
    sources = []
    for item in source:
        if is_anndata(item) and item.isbacked:
            item = Path(item.filename)  # reopened lazily: anndata's backed mode loads layers into memory
        sources.append(item)
    return EncodedFiles(sources, key=key)
