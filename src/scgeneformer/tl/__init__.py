"""Tools: embeddings (and later annotation and in silico perturbation) with Geneformer models."""

from ._embed import embed, state_embeddings

__all__ = ["embed", "state_embeddings"]
