"""Plots of Geneformer results.

Each function is imported on first use (PEP 562), so that ``import scgeneformer.pl`` imports no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

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


def __getattr__(name: str):
    if name not in _LAZY:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
