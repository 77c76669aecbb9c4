"""The torch module: a Hugging Face ``BertForMaskedLM`` inside a scvi-tools ``BaseModuleClass``."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from scvi.module.base import BaseModuleClass, LossOutput

from .._compute._engine import gene_token_mask

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
MLM_LABELS = "mlm_labels"
LABELS = "labels"
GENE_LABELS = "gene_labels"


def _key_padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """A 4-D key mask for SDPA, built once per batch instead of once per layer.

    On CPU in float32 an additive float mask is ~15% faster than the boolean one transformers derives from a 2-D
    mask (no per-layer conversion inside the attention kernel); elsewhere (autocast, GPU kernels) a boolean mask.
    """
    if attention_mask is None or attention_mask.dim() != 2:
        return attention_mask
    keep = attention_mask.bool()[:, None, None, :]
    if attention_mask.device.type == "cpu" and not torch.is_autocast_enabled("cpu"):
        additive = torch.zeros(keep.shape, dtype=torch.float32)
        return additive.masked_fill_(~keep, float("-inf"))
    return keep


class GeneformerModule(BaseModuleClass):
    """Geneformer's BERT encoder and masked-gene head, with optional cell- and gene-classification heads.

    The loss follows the tensors of a batch: cell labels (``"labels"``) train the cell-classification head, gene
    labels (``"gene_labels"``, a class code per token and -100 for unlabelled tokens) the gene-classification head,
    and masked-gene targets (``"mlm_labels"``) the masked-gene head.

    Parameters
    ----------
    bert_config
        Keyword arguments of :class:`transformers.BertConfig` (the checkpoint's ``config.json``).
    n_classes
        Size of a cell-classification head on the pooled last-layer embedding (``None``: no head), or
        ``{task: size}`` for one head per task on a shared encoder (multitask classification).
    classifier_pooling
        The embedding the cell-classification heads read: ``"mean"`` over gene tokens, ``"cls"`` (V2), or
        ``"pooler"``: BERT's pooler (a dense layer and tanh on the first token), as Hugging Face's
        ``BertForSequenceClassification`` and the reference's fine-tuned classifiers use.
    classifier_dropout
        Dropout before the linear layer of each classification head.
    special_tokens
        Whether cells are wrapped in ``<cls>`` … ``<eos>`` (V2), which mean pooling leaves out.
    n_gene_classes
        Size of a gene-classification (token-classification) head on the last-layer hidden state of each gene
        token (``None``: no head).

    Examples
    --------
    >>> hidden = model.module.encode(input_ids, attention_mask, n_layers=5)  # doctest: +SKIP
    """

    def __init__(
        self,
        bert_config: dict,
        n_classes: int | dict[str, int] | None = None,
        classifier_pooling: str = "mean",
        classifier_dropout: float = 0.1,
        special_tokens: bool = False,
        n_gene_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.special_tokens = special_tokens
        from transformers import BertConfig, BertForMaskedLM

        config = BertConfig(**{k: v for k, v in bert_config.items() if k != "architectures"})
        # SDPA attention: several times faster than eager on CPU, flash kernels on GPU.
        config._attn_implementation = "sdpa"
        self.mlm = BertForMaskedLM(config)
        self.classifier_pooling = classifier_pooling
        self.classifier = None
        if isinstance(n_classes, dict):
            self.classifier = torch.nn.ModuleDict(
                {task: classification_head(config.hidden_size, n, classifier_dropout) for task, n in n_classes.items()}
            )
        elif n_classes is not None:
            self.classifier = classification_head(config.hidden_size, n_classes, classifier_dropout)
        self.pooler = None
        if classifier_pooling == "pooler":
            from transformers.models.bert.modeling_bert import BertPooler

            self.pooler = BertPooler(config)
        #: Loss weight of each task of a multitask classifier (set for training).
        self.task_weights: dict[str, float] = {}
        self.gene_classifier = None
        if n_gene_classes is not None:
            self.gene_classifier = classification_head(config.hidden_size, n_gene_classes, classifier_dropout)

    @property
    def config(self):
        """The :class:`transformers.BertConfig`."""
        return self.mlm.config

    @property
    def quantized(self) -> bool:
        """Whether the encoder was loaded in 8 or 4 bits (it then stays on its GPU)."""
        return bool(getattr(self.mlm, "is_quantized", False))

    @property
    def multitask(self) -> bool:
        """Whether the cell classifier has one head per task."""
        return isinstance(self.classifier, torch.nn.ModuleDict)

    @property
    def n_layers(self) -> int:
        """Number of encoder layers."""
        return self.config.num_hidden_layers

    def hidden_state_index(self, layer: int) -> int:
        """Index into the ``n_layers + 1`` hidden states (0 = embedding layer output) that ``layer`` selects.

        ``layer <= 0`` follows the reference's ``emb_layer``: ``0`` is the last encoder layer, ``-1`` the second to
        last, ``-k`` hidden state ``n_layers - k``. ``layer > 0`` is an explicit 1-based encoder layer number.
        """
        index = self.n_layers + layer if layer <= 0 else layer
        if not 0 <= index <= self.n_layers:
            msg = (
                f"layer {layer} does not exist in a model with {self.n_layers} encoder layers "
                f"(use -{self.n_layers}..{self.n_layers})."
            )
            raise ValueError(msg)
        return index

    @contextmanager
    def _first_layers(self, n_layers: int):
        # Run only the layers needed: the encoder iterates over its ModuleList, so shorten it for the call.
        encoder = self.mlm.bert.encoder
        all_layers = encoder.layer
        encoder.layer = torch.nn.ModuleList(list(all_layers)[:n_layers])
        try:
            yield
        finally:
            encoder.layer = all_layers

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, n_layers: int | None = None):
        """Hidden states after the first ``n_layers`` encoder layers (all by default), without the MLM head.

        ``attention_mask=None`` means no padding: SDPA then runs without a mask, its fastest path.
        """
        n_layers = self.n_layers if n_layers is None else n_layers
        if not 0 <= n_layers <= self.n_layers:
            msg = f"n_layers must be between 0 and {self.n_layers}, got {n_layers}."
            raise ValueError(msg)
        with self._first_layers(n_layers):
            return self.mlm.bert(
                input_ids=input_ids, attention_mask=_key_padding_mask(attention_mask)
            ).last_hidden_state

    def _get_inference_input(self, tensors: dict) -> dict:
        return {"input_ids": tensors[INPUT_IDS], "attention_mask": tensors[ATTENTION_MASK]}

    def inference(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_layers: int | None = None) -> dict:
        """Encoder hidden states (``"hidden"``)."""
        return {"hidden": self.encode(input_ids, attention_mask, n_layers)}

    def pool(self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, pooling: str):
        """Cell embedding: ``"mean"``, ``"cls"`` or ``"pooler"`` (see the class description).

        The mean leaves out ``<cls>``, ``<eos>`` and padding; the pooler reads the first token.
        """
        if pooling == "cls":
            return hidden[:, 0]
        if pooling == "pooler":
            if self.pooler is None:
                msg = "pooling='pooler' needs BERT's pooler layer, which this model does not have."
                raise ValueError(msg)
            return self.pooler(hidden)
        genes = gene_token_mask(input_ids, attention_mask, has_special_tokens=self.special_tokens)
        weights = genes.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)

    def classify(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor | dict:
        """Class logits of the cell-classification head (``{task: logits}`` for a multitask classifier)."""
        if self.classifier is None:
            msg = "The model has no classification head; fine-tune it with `train_classifier` first."
            raise ValueError(msg)
        hidden = self.encode(input_ids, attention_mask)
        return self._heads(self.pool(hidden, input_ids, attention_mask, self.classifier_pooling))

    def _heads(self, pooled: torch.Tensor) -> torch.Tensor | dict:
        if self.multitask:
            return {task: head(pooled) for task, head in self.classifier.items()}
        return self.classifier(pooled)

    def classify_genes(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Gene-class logits of every token, shape ``(cells, tokens, classes)``, from the gene-classification head."""
        if self.gene_classifier is None:
            msg = "The model has no gene-classification head; fine-tune it with `train_gene_classifier` first."
            raise ValueError(msg)
        return self.gene_classifier(self.encode(input_ids, attention_mask))

    def _get_generative_input(self, tensors: dict, inference_outputs: dict) -> dict:
        return {
            "hidden": inference_outputs["hidden"],
            "input_ids": tensors[INPUT_IDS],
            "attention_mask": tensors[ATTENTION_MASK],
            "mlm_labels": tensors.get(MLM_LABELS),
            "labels": tensors.get(LABELS),
            "gene_labels": tensors.get(GENE_LABELS),
        }

    def generative(self, hidden, input_ids, attention_mask, mlm_labels=None, labels=None, gene_labels=None) -> dict:
        """Cell-class logits, gene-class logits at the labelled genes, or masked-gene logits at selected positions.

        The task follows the targets present: cell labels, gene labels (-100: unlabelled), masked-gene labels.
        """
        if labels is not None:
            pooled = self.pool(hidden, input_ids, attention_mask, self.classifier_pooling)
            return {"class_logits": self._heads(pooled)}
        if gene_labels is not None:
            if self.gene_classifier is None:
                msg = "The model has no gene-classification head."
                raise ValueError(msg)
            labelled = gene_labels != -100
            return {"gene_logits": self.gene_classifier(hidden[labelled]), "gene_targets": gene_labels[labelled]}
        if mlm_labels is None:
            return {}
        selected = mlm_labels != -100
        cell_of_position = torch.nonzero(selected)[:, 0]
        return {"logits": self.mlm.cls(hidden[selected]), "targets": mlm_labels[selected], "cells": cell_of_position}

    def loss(self, tensors: dict, inference_outputs: dict, generative_outputs: dict) -> LossOutput:
        """Cross-entropy of the cell labels, of the labelled genes' classes, or of the masked genes.

        Gene-class and masked-gene losses are averaged over the labelled (selected) positions of the batch.
        """
        if "class_logits" in generative_outputs and isinstance(generative_outputs["class_logits"], dict):
            return self._multitask_loss(generative_outputs["class_logits"], tensors[LABELS])
        if "class_logits" in generative_outputs:
            logits, labels = generative_outputs["class_logits"], tensors[LABELS]
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
            return LossOutput(
                loss=loss,
                n_obs_minibatch=len(labels),
                extra_metrics={"accuracy": (logits.argmax(-1) == labels).float().mean()},
            )
        if "gene_logits" in generative_outputs:
            logits, targets = generative_outputs["gene_logits"], generative_outputs["gene_targets"]
            n_cells = tensors[INPUT_IDS].shape[0]
            if len(targets) == 0:  # no labelled gene in this batch: a zero loss that keeps the graph
                zero = logits.float().sum() * 0.0
                return LossOutput(loss=zero, n_obs_minibatch=n_cells, extra_metrics={"gene_accuracy": zero.detach()})
            return LossOutput(
                loss=torch.nn.functional.cross_entropy(logits.float(), targets),
                n_obs_minibatch=n_cells,
                extra_metrics={"gene_accuracy": (logits.argmax(-1) == targets).float().mean()},
            )
        logits, targets = generative_outputs["logits"], generative_outputs["targets"]
        per_position = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
        n_cells = tensors[INPUT_IDS].shape[0]
        # Per-cell mean loss, so that scvi-tools' "reconstruction loss" and ELBO metrics mean something.
        cells = generative_outputs["cells"]
        per_cell = torch.zeros(n_cells, device=per_position.device).index_add_(0, cells, per_position)
        counts = torch.zeros(n_cells, device=per_position.device).index_add_(0, cells, torch.ones_like(per_position))
        accuracy = (logits.argmax(-1) == targets).float().mean()
        return LossOutput(
            loss=per_position.mean(),
            reconstruction_loss=per_cell / counts.clamp(min=1),
            n_obs_minibatch=n_cells,
            extra_metrics={"masked_accuracy": accuracy},
        )

    def _multitask_loss(self, logits: dict, labels: torch.Tensor) -> LossOutput:
        """Weighted sum of each task's cross-entropy over the cells labelled for it (-100: no label)."""
        total = None
        metrics = {}
        for column, (task, task_logits) in enumerate(logits.items()):
            target = labels[:, column]
            labelled = target != -100
            if labelled.any():
                task_loss = torch.nn.functional.cross_entropy(task_logits[labelled].float(), target[labelled])
                metrics[f"accuracy_{task}"] = (task_logits[labelled].argmax(-1) == target[labelled]).float().mean()
            else:  # no cell of this batch is labelled for the task: a zero that keeps the graph
                task_loss = task_logits.float().sum() * 0.0
            weighted = self.task_weights.get(task, 1.0) * task_loss
            total = weighted if total is None else total + weighted
        return LossOutput(loss=total, n_obs_minibatch=len(labels), extra_metrics=metrics)

    def sample(self, *args, **kwargs):
        """Geneformer is not generative."""
        raise NotImplementedError("Geneformer does not define a sampling distribution.")


def classification_head(hidden_size: int, n_classes: int, dropout: float = 0.1) -> torch.nn.Module:
    """The head of every classification task: dropout and a linear layer from a hidden state to class logits.

    Cell classification applies it to the pooled cell embedding, gene classification to each gene token's state.
    """
    return torch.nn.Sequential(torch.nn.Dropout(dropout), torch.nn.Linear(hidden_size, n_classes))
