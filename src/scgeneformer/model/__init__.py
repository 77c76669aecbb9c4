"""Geneformer models: the network, the scvi-tools model class for training, a model for inference only, and more.

Names are imported on first use (PEP 562): :class:`InferenceModel` and the network need torch and transformers
only, :class:`GeneformerModel` and the training classes import scvi-tools (and with it Lightning).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._utils._lazy import lazy_exports

if TYPE_CHECKING:
    from .._hub._checkpoints import CHECKPOINTS, Checkpoint, get_checkpoint, list_models
    from ._card import read_model_card
    from ._gene_classifier import GeneLabels
    from ._inference import Embeddings
    from ._inference_model import InferenceModel
    from ._model import GeneformerModel
    from ._module import GeneformerModule
    from ._network import GeneformerNetwork
    from ._plans import PLAN_DEFAULTS, ClassifierTrainingPlan, GeneformerTrainingPlan

__all__ = [
    "CHECKPOINTS",
    "PLAN_DEFAULTS",
    "Checkpoint",
    "ClassifierTrainingPlan",
    "Embeddings",
    "GeneLabels",
    "GeneformerModel",
    "GeneformerModule",
    "GeneformerNetwork",
    "GeneformerTrainingPlan",
    "InferenceModel",
    "get_checkpoint",
    "list_models",
    "read_model_card",
]

#: Where each public name lives (imported on first access).
_LAZY = {
    "CHECKPOINTS": "scgeneformer._hub._checkpoints",
    "Checkpoint": "scgeneformer._hub._checkpoints",
    "get_checkpoint": "scgeneformer._hub._checkpoints",
    "list_models": "scgeneformer._hub._checkpoints",
    "read_model_card": "scgeneformer.model._card",
    "GeneLabels": "scgeneformer.model._gene_classifier",
    "Embeddings": "scgeneformer.model._inference",
    "InferenceModel": "scgeneformer.model._inference_model",
    "GeneformerModel": "scgeneformer.model._model",
    "GeneformerModule": "scgeneformer.model._module",
    "GeneformerNetwork": "scgeneformer.model._network",
    "PLAN_DEFAULTS": "scgeneformer.model._plans",
    "ClassifierTrainingPlan": "scgeneformer.model._plans",
    "GeneformerTrainingPlan": "scgeneformer.model._plans",
}


__getattr__, __dir__ = lazy_exports(globals(), _LAZY)
