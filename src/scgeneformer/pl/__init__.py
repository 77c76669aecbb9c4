"""Plots of Geneformer results."""

from ._confusion import confusion_matrix

__all__ = ["confusion_matrix"]
