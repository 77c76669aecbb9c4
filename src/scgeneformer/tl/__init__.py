"""Tools: embeddings, cell annotation and gene classification with Geneformer models."""

from ._annotate import annotate
from ._embed import embed, state_embeddings
from ._gene_classify import classify_genes, gene_classification_cv

__all__ = ["annotate", "classify_genes", "embed", "gene_classification_cv", "state_embeddings"]
