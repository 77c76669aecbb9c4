"""Geneformer as a scvi-tools model: module, model class and published checkpoints."""

from ._checkpoints import CHECKPOINTS, Checkpoint, list_models
from ._model import GeneformerModel
from ._module import GeneformerModule
from ._training import GeneformerTrainingPlan

__all__ = ["CHECKPOINTS", "Checkpoint", "GeneformerModel", "GeneformerModule", "GeneformerTrainingPlan", "list_models"]
