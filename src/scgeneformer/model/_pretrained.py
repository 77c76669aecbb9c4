"""Creating a model from pretrained weights, with the checkpoint's heads.

:class:`PretrainedMixin` gives :class:`~scgeneformer.GeneformerModel` its ``from_pretrained``; the loading functions
are shared with :class:`~scgeneformer.InferenceModel` and need torch and transformers only. Sources: published
checkpoints (by name), Hugging Face model folders and repositories, and folders written by ``save``; the encoder in
full precision or quantized with bitsandbytes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Self

import torch

from .._compute._execution import Execution
from .._hub._checkpoints import get_checkpoint
from .._hub._download import hub_snapshot
from ._hf_folder import ClassifierHead, classifier_head, load_hf_weights, plain_config
from ._network import classification_head
from ._quantization import check_quantization, quantized_bert

if TYPE_CHECKING:
    from anndata import AnnData

    from ._network import GeneformerNetwork


def is_repo_id(name: str) -> bool:
    """Whether ``name`` reads as a Hugging Face repository id (``"owner/name"``)."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~"))


@dataclass
class PretrainedSource:
    """Where pretrained weights come from: a folder (downloaded when needed), its vocabulary and label.

    ``saved`` marks a folder written by ``save`` (read with ``load``); ``class_names`` are the registry's class names
    of a published classifier.
    """

    folder: Path
    vocabulary: str | None
    label: str
    saved: bool = False
    class_names: list[str] | None = None


def pretrained_source(
    name_or_path: str | os.PathLike, vocabulary: str | None = None, revision: str | None = None
) -> PretrainedSource:
    """The folder of a checkpoint name, a local folder or a Hugging Face repository id; raise if it is none of them."""
    checkpoint = get_checkpoint(str(name_or_path))
    if checkpoint is not None:
        classes = list(checkpoint.classes) if checkpoint.classes else None
        return PretrainedSource(
            checkpoint.local_folder(), vocabulary or checkpoint.vocabulary, checkpoint.name, class_names=classes
        )
    folder = Path(name_or_path).expanduser()
    if not folder.exists() and is_repo_id(str(name_or_path)):
        folder = hub_snapshot(str(name_or_path), revision)
    label = str(name_or_path) if not Path(name_or_path).exists() else str(folder)
    if (folder / "model.json").is_file():
        return PretrainedSource(folder, vocabulary, label, saved=True)
    if not (folder / "config.json").is_file():
        msg = (
            f"{name_or_path!r} is neither a published checkpoint (see `sgf.list_models()`) nor a folder "
            "with config.json and model.safetensors or pytorch_model.bin, nor a saved model."
        )
        raise FileNotFoundError(msg)
    return PretrainedSource(folder, vocabulary, label)


def load_encoder(source: PretrainedSource, bits: int | None) -> tuple[torch.nn.Module, ClassifierHead | None, str]:
    """The ``BertForMaskedLM`` of a Hugging Face folder, its classification head and the model's label.

    With ``bits``, the encoder is quantized to that many bits on the CUDA device.
    """
    if bits is None:
        hf_model, head = load_hf_weights(source.folder, source.vocabulary)
        return hf_model, head, source.label
    hf_model = quantized_bert(source.folder, bits, Execution().device)
    head = classifier_head(source.folder, json.loads((source.folder / "config.json").read_text()))
    return hf_model, head, f"{source.label} ({bits}-bit)"


def head_names(source: PretrainedSource, head: ClassifierHead, bits: int | None) -> list[str]:
    """Class names of a checkpoint's head: the registry's for a published classifier, else ``config.json``'s."""
    return source.class_names if source.class_names and bits is None else head.labels


def install_head(network: GeneformerNetwork, head: ClassifierHead, n_classes: int) -> None:
    """Put a checkpoint's classification head (and for cell classifiers BERT's pooler) on the network."""
    hidden = network.config.hidden_size
    layer = classification_head(hidden, n_classes, network.config.hidden_dropout_prob)
    with torch.no_grad():
        layer[1].weight.copy_(head.weight)
        layer[1].bias.copy_(head.bias)
    if head.kind == "gene":
        network.gene_classifier = layer
        return
    from transformers.models.bert.modeling_bert import BertPooler

    pooler = BertPooler(network.config)
    with torch.no_grad():
        pooler.dense.weight.copy_(head.pooler[0])
        pooler.dense.bias.copy_(head.pooler[1])
    network.classifier, network.pooler, network.classifier_pooling = layer, pooler, "pooler"


class PretrainedMixin:
    """:meth:`from_pretrained` of a :class:`~scgeneformer.GeneformerModel`."""

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        adata: AnnData | None = None,
        *,
        vocabulary: str | None = None,
        revision: str | None = None,
        quantization: str | None = None,
    ) -> Self:
        """Load published weights by name (see :func:`scgeneformer.list_models`), a folder or a Hugging Face repo.

        Published weights are downloaded once into ``sgf.settings.cache_dir`` and checked against their sha256. A
        folder is a Hugging Face model folder (``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``)
        or a model saved with :meth:`save`. A Hugging Face repository id (``"owner/name"``) is downloaded with
        ``huggingface_hub`` into ``sgf.settings.cache_dir / "hub"`` (offline: taken from there).

        Parameters
        ----------
        name_or_path
            A checkpoint name or alias (e.g. ``"Geneformer-V1-10M"``, ``"V2-104M"``), a folder, or a repository id.
        adata
            Optional encoded AnnData to train on (registered with :meth:`setup_anndata`'s defaults if it was not), or
            a corpus larger than memory (:func:`~scgeneformer.read_corpus`).
        vocabulary
            ``"V1"``/``"V2"``; needed only for a local folder whose ``vocab_size`` is not a Geneformer one.
        revision
            Commit or tag of a Hugging Face repository (default: its main branch).
        quantization
            ``"8bit"`` or ``"4bit"``: load the encoder quantized with bitsandbytes, on a CUDA GPU, for inference
            (``quantization`` extra). Training needs full-precision weights.

        Notes
        -----
        Checkpoints of ``BertForSequenceClassification`` (e.g. ``"cardiomyopathy-classifier"``) load as cell
        classifiers with their head, BERT's pooler and class names (``config.json``'s ``id2label``, or for published
        classifiers the registry's names), so :func:`scgeneformer.tl.annotate` works with them directly;
        ``BertForTokenClassification`` checkpoints load as gene classifiers.

        Examples
        --------
        >>> model = sgf.GeneformerModel.from_pretrained("Geneformer-V2-104M")  # doctest: +SKIP
        """
        bits = None
        if quantization is not None:
            bits = check_quantization(quantization)  # before anything is downloaded
        source = pretrained_source(name_or_path, vocabulary, revision)
        if source.saved:
            return cls.load(source.folder, adata)
        hf_model, head, label = load_encoder(source, bits)
        with torch.device("meta"):  # skip the random initialisation that the weights replace anyway
            model = cls(
                adata, bert_config=plain_config(hf_model.config), vocabulary=source.vocabulary, checkpoint=label
            )
        model.module.mlm = hf_model
        if head is not None:
            model._install_head(head, head_names(source, head, bits))
            if bits is not None and head.kind == "cell":
                model.module.classifier.to(Execution().device)
        model.module.eval()
        return model

    def _install_head(self, head: ClassifierHead, names: list[str]) -> None:
        """Put a checkpoint's classification head (and pooler) on the model, with its class names."""
        install_head(self.module, head, len(names))
        if head.kind == "gene":
            self.gene_classes = list(names)
            self.init_params_["non_kwargs"].update(gene_classes=self.gene_classes)
            return
        self.classes = list(names)
        self.init_params_["non_kwargs"].update(classes=self.classes, classifier_pooling="pooler")
