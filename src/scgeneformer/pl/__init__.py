"""Plots of Geneformer results."""

from ._confusion import confusion_matrix
from ._perturb import perturbation_distribution, perturbation_heatmap, perturbation_shifts

__all__ = ["confusion_matrix", "perturbation_distribution", "perturbation_heatmap", "perturbation_shifts"]
