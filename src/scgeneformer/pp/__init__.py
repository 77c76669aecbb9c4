"""Preprocessing: rank-value encoding of cells into Geneformer token sequences."""

from ._input_ids import input_ids
from ._rank_encode import rank_encode

__all__ = ["input_ids", "rank_encode"]
