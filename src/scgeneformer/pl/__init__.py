"""Plots of Geneformer results.

Each function is imported on first use (PEP 562), so that ``import scgeneformer.pl`` imports no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._utils._lazy import lazy_exports

if TYPE_CHECKING:
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

#: Where each public name lives (imported on first access).
_LAZY = {
    "confusion_matrix": "scgeneformer.pl._confusion",
    "benchmark_embeddings": "scgeneformer.pl._evaluation",
    "training_history": "scgeneformer.pl._evaluation",
    "perturbation_distribution": "scgeneformer.pl._perturb",
    "perturbation_heatmap": "scgeneformer.pl._perturb",
    "perturbation_shifts": "scgeneformer.pl._perturb",
}


__getattr__, __dir__ = lazy_exports(globals(), _LAZY)
