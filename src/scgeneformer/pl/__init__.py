"""Plots of Geneformer results."""

from ._confusion import confusion_matrix
from ._evaluation import benchmark_embeddings, training_history
from ._perturb import perturbation_distribution, perturbation_heatmap, perturbation_shifts

__all__ = [
    "benchmark_embeddings",
    "confusion_matrix",
    "perturbation_distribution",
    "perturbation_heatmap",
    "perturbation_shifts",
    "training_history",
]
