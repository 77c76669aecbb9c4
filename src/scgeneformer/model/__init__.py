"""Geneformer as a scvi-tools model: module, model class, training plan, tasks and published checkpoints."""

from .._hub._checkpoints import CHECKPOINTS, Checkpoint, get_checkpoint, list_models
from ._card import read_model_card
from ._gene_classifier import GeneLabels
from ._inference import Embeddings
from ._model import GeneformerModel
from ._module import GeneformerModule
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
    "GeneformerTrainingPlan",
    "get_checkpoint",
    "list_models",
    "read_model_card",
]
