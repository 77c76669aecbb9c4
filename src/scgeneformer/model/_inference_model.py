"""``sgf.InferenceModel``: a Geneformer model for inference only, loaded without scvi-tools or Lightning.

Training makes :class:`~scgeneformer.GeneformerModel` a scvi-tools model, and importing scvi-tools imports Lightning:
about ten seconds before the first cell is embedded. Inference needs only the network, the vocabulary and the class
names, so this class holds just those (torch and transformers) and shares every inference method with
:class:`~scgeneformer.GeneformerModel` (:class:`~._inference.InferenceMixin`); the tools of :mod:`scgeneformer.tl`
accept either, and the command line loads this one for every command that does not train.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Self

import torch

from .._compute._execution import Execution
from ._hf_folder import plain_config
from ._inference import InferenceMixin
from ._lora import LoraSettings, inject_adapters
from ._model_folder import read_model_folder
from ._network import GeneformerNetwork, network_arguments
from ._pretrained import head_names, install_head, load_encoder, pretrained_source
from ._quantization import check_quantization


class InferenceModel(InferenceMixin):
    """Geneformer for inference only: embeddings, annotation, gene classes and perturbation, without scvi-tools.

    It loads the same checkpoints, Hugging Face folders and saved model folders as
    :meth:`GeneformerModel.from_pretrained <scgeneformer.GeneformerModel.from_pretrained>`, with the same weights,
    and gives the same results in every tool of :mod:`scgeneformer.tl` (:func:`~scgeneformer.tl.embed`,
    :func:`~scgeneformer.tl.annotate`, :func:`~scgeneformer.tl.perturb`, …) and the same inference methods
    (:meth:`~scgeneformer.GeneformerModel.get_embeddings`, :meth:`~scgeneformer.GeneformerModel.predict`,
    :meth:`~scgeneformer.GeneformerModel.predict_genes`). It cannot be trained: use
    :class:`~scgeneformer.GeneformerModel` for that. Loading it imports torch and transformers but neither
    scvi-tools nor Lightning, so a fresh process reaches its first embedding sooner.

    Parameters
    ----------
    bert_config, vocabulary, checkpoint, classes, classifier_pooling, gene_classes, lora
        As in :class:`~scgeneformer.GeneformerModel` (a fresh, randomly initialised network).

    Attributes
    ----------
    module
        The :class:`~scgeneformer.model.GeneformerNetwork` (a torch module).
    vocabulary_version
        ``"V1"`` or ``"V2"``.
    checkpoint
        Name or path of the weights.
    classes, gene_classes
        Class names of the cell- and gene-classification heads (``None``: no head).

    Examples
    --------
    >>> model = sgf.InferenceModel.from_pretrained("Geneformer-V1-10M")  # doctest: +SKIP
    >>> sgf.tl.embed(adata, model)  # doctest: +SKIP
    """

    #: A model for inference is never set up on data: every method takes the data it reads.
    adata = None
    corpus = None

    def __init__(
        self,
        *,
        bert_config: dict,
        vocabulary: str | None = None,
        checkpoint: str | None = None,
        classes: list[str] | dict[str, list[str]] | None = None,
        classifier_pooling: str = "mean",
        gene_classes: list[str] | None = None,
        lora: dict | None = None,
    ) -> None:
        vocabulary, arguments = network_arguments(bert_config, vocabulary, classes, classifier_pooling, gene_classes)
        self.module = GeneformerNetwork(**arguments)
        self.module.eval()
        self.lora_settings = None
        if lora is not None:  # a saved model with adapters: its weights hold theirs
            self.lora_settings = LoraSettings(**lora)
            inject_adapters(self.module.mlm.bert, self.lora_settings)
        self._set_facts(classes, gene_classes, vocabulary, checkpoint)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        vocabulary: str | None = None,
        revision: str | None = None,
        quantization: str | None = None,
    ) -> Self:
        """Load published weights by name, a Hugging Face folder or repository, or a folder written by ``save``.

        The same sources, checks, downloads and options as
        :meth:`GeneformerModel.from_pretrained <scgeneformer.GeneformerModel.from_pretrained>` (without data to
        train on).

        Examples
        --------
        >>> model = sgf.InferenceModel.from_pretrained("Geneformer-V2-104M")  # doctest: +SKIP
        """
        bits = None if quantization is None else check_quantization(quantization)
        source = pretrained_source(name_or_path, vocabulary, revision)
        if source.saved:
            return cls.load(source.folder)
        hf_model, head, label = load_encoder(source, bits)
        with torch.device("meta"):  # skip the random initialisation that the weights replace anyway
            model = cls(bert_config=plain_config(hf_model.config), vocabulary=source.vocabulary, checkpoint=label)
        model.module.mlm = hf_model
        if head is not None:
            names = head_names(source, head, bits)
            install_head(model.module, head, len(names))
            if head.kind == "gene":
                model.gene_classes = list(names)
            else:
                model.classes = list(names)
                if bits is not None:
                    model.module.classifier.to(Execution().device)
        model.module.eval()
        return model

    @classmethod
    def load(cls, dir_path: str | os.PathLike, *, prefix: str | None = None) -> Self:
        """Load a model saved with :meth:`GeneformerModel.save <scgeneformer.GeneformerModel.save>`, on the CPU.

        The same checks as :meth:`GeneformerModel.load <scgeneformer.GeneformerModel.load>` (JSON and safetensors
        only, the weights' sha256); data saved with the model are not read.

        Examples
        --------
        >>> model = sgf.InferenceModel.load("my_classifier")  # doctest: +SKIP
        """
        saved = read_model_folder(Path(dir_path), prefix or "")
        model = cls(**saved.record.init_params)
        saved.load_into(model.module)
        model.module.eval()
        return model

    def __repr__(self) -> str:
        config = self.module.config
        state = f"weights from {self.checkpoint}" if self.checkpoint else "untrained"
        return (
            f"InferenceModel ({self.vocabulary_version} vocabulary): {config.num_hidden_layers} layers, hidden size "
            f"{config.hidden_size}, {config.num_attention_heads} heads, input size {config.max_position_embeddings}, "
            + state
        )
