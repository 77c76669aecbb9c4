"""Tools: embeddings, cell annotation, gene classification and in silico perturbation with Geneformer models.

Each function is imported on first use (PEP 562), so that ``import scgeneformer.tl`` imports no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._utils._lazy import lazy_exports

if TYPE_CHECKING:
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

#: Where each public name lives (imported on first access).
_LAZY = {
    "annotate": "scgeneformer.tl._annotate",
    "benchmark_embeddings": "scgeneformer.tl._benchmark",
    "baseline_classification_cv": "scgeneformer.tl._classifier_cv",
    "cell_classification_cv": "scgeneformer.tl._classifier_cv",
    "hyperparameter_search": "scgeneformer.tl._classifier_cv",
    "embed": "scgeneformer.tl._embed",
    "state_embeddings": "scgeneformer.tl._embed",
    "classify_genes": "scgeneformer.tl._gene_classify",
    "gene_classification_cv": "scgeneformer.tl._gene_classify",
    "GoalStates": "scgeneformer.tl._perturb",
    "PerturbationResults": "scgeneformer.tl._perturb",
    "PerturbationStore": "scgeneformer.tl._perturb",
    "perturb": "scgeneformer.tl._perturb",
    "perturbation_stats": "scgeneformer.tl._perturb",
    "read_perturbation_store": "scgeneformer.tl._perturb",
}


__getattr__, __dir__ = lazy_exports(globals(), _LAZY)
