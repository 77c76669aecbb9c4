"""The scvi-tools module: the network (``GeneformerNetwork``) with the losses of training (``BaseModuleClass``)."""

from __future__ import annotations

import torch
from scvi.module.base import BaseModuleClass, LossOutput

from ._network import GeneformerNetwork

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
MLM_LABELS = "mlm_labels"
LABELS = "labels"
GENE_LABELS = "gene_labels"


class GeneformerModule(GeneformerNetwork, BaseModuleClass):
    """Geneformer's network (:class:`~scgeneformer.model.GeneformerNetwork`) as a scvi-tools module, with its losses.

    The loss follows the tensors of a batch: cell labels (``"labels"``) train the cell-classification head, gene
    labels (``"gene_labels"``, a class code per token and -100 for unlabelled tokens) the gene-classification head,
    and masked-gene targets (``"mlm_labels"``) the masked-gene head.

    Parameters
    ----------
    bert_config, n_classes, classifier_pooling, classifier_dropout, special_tokens, n_gene_classes
        As in :class:`~scgeneformer.model.GeneformerNetwork`.

    Examples
    --------
    >>> hidden = model.module.encode(input_ids, attention_mask, n_layers=5)  # doctest: +SKIP
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        #: Loss weight of each task of a multitask classifier (set for training).
        self.task_weights: dict[str, float] = {}

    def _get_inference_input(self, tensors: dict) -> dict:
        return {"input_ids": tensors[INPUT_IDS], "attention_mask": tensors[ATTENTION_MASK]}

    def inference(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_layers: int | None = None) -> dict:
        """Encoder hidden states (``"hidden"``)."""
        return {"hidden": self.encode(input_ids, attention_mask, n_layers)}

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
