"""Encoded corpora larger than memory: several encoded AnnData files, or tokenized datasets in Parquet or Arrow.

A :class:`Corpus` reads like :class:`~scgeneformer.EncodingInfo` (lengths, special tokens, token sequences of any
cells) but keeps the token sequences on disk: only the lengths and cell annotations are in memory, and sequences are
read a block of contiguous cells at a time into a small cache. Readers that visit cells block by block (the
block-shuffled training loader, windowed inference, perturbation) therefore read each block once. The tools write
results into :attr:`Corpus.adata`, an AnnData of the corpus's cell annotations without genes.

Modules: ``_blocks`` (the per-process block cache), ``_base`` (:class:`Corpus`: queries, loader, results AnnData),
``_encoded_files`` (:class:`EncodedFiles`: ``.h5ad``/``.zarr``), ``_tables`` (Arrow/Parquet row groups),
``_tokenized`` (:class:`TokenizedDataset`) and ``_read`` (:func:`read_corpus`: which kind a source is).
"""

from ._base import Corpus
from ._encoded_files import EncodedFiles
from ._read import read_corpus
from ._tokenized import TokenizedDataset

__all__ = ["Corpus", "EncodedFiles", "TokenizedDataset", "read_corpus"]
