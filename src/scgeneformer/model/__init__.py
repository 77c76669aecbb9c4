"""Geneformer as a scvi-tools model: module, model class and published checkpoints."""

from ._checkpoints import CHECKPOINTS, Checkpoint, list_models
from ._model import GeneformerModel
from ._module import GeneformerModule

__all__ = ["CHECKPOINTS", "Checkpoint", "GeneformerModel", "GeneformerModule", "list_models"]
