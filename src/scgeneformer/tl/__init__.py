"""Tools: embeddings and cell annotation with Geneformer models."""

from ._annotate import annotate
from ._embed import embed, state_embeddings

__all__ = ["annotate", "embed", "state_embeddings"]
