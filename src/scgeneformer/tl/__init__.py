"""Tools: embeddings, cell annotation, gene classification and in silico perturbation with Geneformer models."""

from ._annotate import annotate
from ._benchmark import benchmark_embeddings
from ._classifier_cv import baseline_classification_cv, cell_classification_cv, hyperparameter_search
from ._embed import embed, state_embeddings
from ._gene_classify import classify_genes, gene_classification_cv
from ._perturb import (
    GoalStates,
    PerturbationResults,
    PerturbationStore,
    perturb,
    perturbation_stats,
    read_perturbation_store,
)

__all__ = [
    "GoalStates",
    "PerturbationResults",
    "PerturbationStore",
    "annotate",
    "baseline_classification_cv",
    "benchmark_embeddings",
    "cell_classification_cv",
    "classify_genes",
    "embed",
    "gene_classification_cv",
    "hyperparameter_search",
    "perturb",
    "perturbation_stats",
    "read_perturbation_store",
    "state_embeddings",
]
