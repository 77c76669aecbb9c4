"""Preprocessing: rank-value encoding of cells into Geneformer token sequences, and ortholog mapping."""

from ._input_ids import input_ids
from ._orthologs import map_orthologs
from ._rank_encode import rank_encode

__all__ = ["input_ids", "map_orthologs", "rank_encode"]
