"""Creating a :class:`~scgeneformer.GeneformerModel` from pretrained weights, with the checkpoint's heads.

Published checkpoints (by name), Hugging Face model folders and repositories, and folders written by ``save``; the
encoder in full precision or quantized with bitsandbytes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Self

import torch

from .._compute._execution import Execution
from .._hub._checkpoints import get_checkpoint
from .._hub._download import hub_snapshot
from ._hf_folder import ClassifierHead, classifier_head, load_hf_weights, plain_config
from ._module import classification_head
from ._quantization import check_quantization, quantized_bert

if TYPE_CHECKING:
    from anndata import AnnData


def is_repo_id(name: str) -> bool:
    """Whether ``name`` reads as a Hugging Face repository id (``"owner/name"``)."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~"))


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
        checkpoint = get_checkpoint(str(name_or_path))
        if checkpoint is not None:
            folder = checkpoint.local_folder()
            vocabulary = vocabulary or checkpoint.vocabulary
            label = checkpoint.name
        else:
            folder = Path(name_or_path).expanduser()
            if not folder.exists() and is_repo_id(str(name_or_path)):
                folder = hub_snapshot(str(name_or_path), revision)
            if (folder / "model.json").is_file():
                return cls.load(folder, adata)
            if not (folder / "config.json").is_file():
                msg = (
                    f"{name_or_path!r} is neither a published checkpoint (see `sgf.list_models()`) nor a folder "
                    "with config.json and model.safetensors or pytorch_model.bin, nor a saved model."
                )
                raise FileNotFoundError(msg)
            label = str(name_or_path) if not Path(name_or_path).exists() else str(folder)
        if bits is not None:
            return cls._from_quantized(folder, adata, vocabulary, label, bits)
        hf_model, head = load_hf_weights(folder, vocabulary)
        bert_config = plain_config(hf_model.config)
        with torch.device("meta"):  # skip the random initialisation that the weights replace anyway
            model = cls(adata, bert_config=bert_config, vocabulary=vocabulary, checkpoint=label)
        model.module.mlm = hf_model
        if head is not None:
            names = list(checkpoint.classes) if checkpoint is not None and checkpoint.classes else head.labels
            model._install_head(head, names)
        model.module.eval()
        return model

    def _install_head(self, head: ClassifierHead, names: list[str]) -> None:
        """Put a checkpoint's classification head (and pooler) on the model, with its class names."""
        hidden = self.module.config.hidden_size
        layer = classification_head(hidden, len(names), self.module.config.hidden_dropout_prob)
        with torch.no_grad():
            layer[1].weight.copy_(head.weight)
            layer[1].bias.copy_(head.bias)
        if head.kind == "gene":
            self.module.gene_classifier = layer
            self.gene_classes = list(names)
            self.init_params_["non_kwargs"].update(gene_classes=self.gene_classes)
            return
        from transformers.models.bert.modeling_bert import BertPooler

        pooler = BertPooler(self.module.config)
        with torch.no_grad():
            pooler.dense.weight.copy_(head.pooler[0])
            pooler.dense.bias.copy_(head.pooler[1])
        self.module.classifier, self.module.pooler, self.module.classifier_pooling = layer, pooler, "pooler"
        self.classes = list(names)
        self.init_params_["non_kwargs"].update(classes=self.classes, classifier_pooling="pooler")

    @classmethod
    def _from_quantized(
        cls, folder: Path, adata: AnnData | None, vocabulary: str | None, label: str, bits: int
    ) -> Self:
        """The model with its encoder loaded in ``bits`` bits on the CUDA device, and the checkpoint's head."""
        hf_model = quantized_bert(folder, bits, Execution().device)
        bert_config = plain_config(hf_model.config)
        with torch.device("meta"):
            model = cls(adata, bert_config=bert_config, vocabulary=vocabulary, checkpoint=f"{label} ({bits}-bit)")
        model.module.mlm = hf_model
        head = classifier_head(folder, json.loads((folder / "config.json").read_text()))
        if head is not None:
            model._install_head(head, head.labels)
            model.module.classifier.to(Execution().device)
        model.module.eval()
        return model
