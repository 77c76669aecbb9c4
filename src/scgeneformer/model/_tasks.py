"""Training tasks: what differs between masked-gene pretraining, cell classification and gene classification.

The model's ``_fit`` (``model/_training.py``) runs every task the same way. A task first checks its arguments against
the model and the data (:meth:`TrainingTask.validate`, :meth:`TrainingTask.prepare`: nothing on the model changes
yet), then installs its head (:meth:`TrainingTask.install`), chooses the trainable parameters, gives the training
plan and callbacks, and finally reports (:meth:`TrainingTask.finish`). Tasks see the model through
:class:`TrainableModel`, what they read and set on it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from ._lora import has_lora, is_lora_parameter
from ._network import classification_head
from ._plans import ClassifierTrainingPlan, GeneformerTrainingPlan

if TYPE_CHECKING:
    from anndata import AnnData

    from .._compute._execution import Execution
    from .._data._encoding import EncodingInfo
    from ._gene_classifier import GeneLabels
    from ._module import GeneformerModule

Split = tuple[np.ndarray, np.ndarray, np.ndarray]


class TrainableModel(Protocol):
    """What a task reads and sets on the model it trains (a :class:`~scgeneformer.GeneformerModel`)."""

    module: GeneformerModule
    registry_: dict
    init_params_: dict
    classes: list[str] | dict[str, list[str]] | None
    gene_classes: list[str] | None

    @property
    def adata(self) -> AnnData | None: ...

    @property
    def training_data(self) -> AnnData | None: ...

    def predict(self, adata: AnnData | None = None, indices: Any = None, **kwargs: Any) -> Any: ...


@dataclass
class Prepared:
    """A task's data: the train/validation/test split (cell positions) and the targets given to the collator."""

    split: Split
    targets: dict[str, Any] = field(default_factory=dict)


def _check_fraction(name: str, value: float, *, upper_inclusive: bool = True) -> None:
    ok = 0 <= value <= 1 if upper_inclusive else 0 <= value < 1
    if not (isinstance(value, int | float) and ok):
        interval = "[0, 1]" if upper_inclusive else "[0, 1)"
        msg = f"{name} must be in {interval}, got {value!r}."
        raise ValueError(msg)


@dataclass
class TrainingTask:
    """Base of the training tasks: layer freezing and the hooks the model's ``_fit`` calls in order."""

    #: Appended to the model's checkpoint label once trained (e.g. ``"… + classifier"``).
    stage = "training"
    freeze_layers: int = 0
    freeze_embeddings: bool = False

    def validate(self, model: TrainableModel) -> None:
        """Check the task's arguments against the model; raise before anything changes."""
        n_layers = model.module.n_layers
        if isinstance(self.freeze_layers, bool) or not isinstance(self.freeze_layers, int):
            msg = f"freeze_layers must be an integer between 0 and {n_layers}, got {self.freeze_layers!r}."
            raise TypeError(msg)
        if not 0 <= self.freeze_layers <= n_layers:
            msg = f"freeze_layers must be between 0 and {n_layers} (the encoder's layers), got {self.freeze_layers}."
            raise ValueError(msg)

    def prepare(self, model: TrainableModel, info: EncodingInfo, seed: int) -> Prepared:
        """The split and targets; raise on unusable data. Must not change the model."""
        raise NotImplementedError

    def install(self, model: TrainableModel) -> None:
        """Add the task's head to the model (called after validation, under the training seed)."""

    def set_trainable(self, module) -> None:
        """Make the encoder trainable except the frozen embeddings and first layers.

        The masked-gene head is not trained (its decoder shares the word embeddings' weight, which stays trainable
        unless frozen). With LoRA adapters, only the adapters and the task's heads train.
        """
        bert = module.mlm.bert
        if has_lora(bert):
            train_adapters_and_heads(module)
            return
        for parameter in module.parameters():
            parameter.requires_grad = True
        in_encoder = {id(parameter) for parameter in bert.parameters()}
        for parameter in module.mlm.cls.parameters():
            if id(parameter) not in in_encoder:
                parameter.requires_grad = False
        if self.freeze_embeddings:
            for parameter in bert.embeddings.parameters():
                parameter.requires_grad = False
        for layer in bert.encoder.layer[: self.freeze_layers]:
            for parameter in layer.parameters():
                parameter.requires_grad = False

    def make_plan(self, module, plan_kwargs: dict) -> GeneformerTrainingPlan:
        """The Lightning training plan."""
        return GeneformerTrainingPlan(module, **plan_kwargs)

    def callbacks(self, prepared: Prepared) -> list:
        """Extra Lightning callbacks."""
        return []

    def finish(self, model: TrainableModel, plan, info: EncodingInfo, prepared: Prepared, execution: Execution):
        """After training: restore the best weights, evaluate, and return a report (or ``None``)."""
        return None


def train_adapters_and_heads(module) -> None:
    """Only LoRA adapters and classification heads (and BERT's pooler) train; the encoder's weights stay."""
    heads = [h for h in (module.classifier, module.gene_classifier, module.pooler) if h is not None]
    head_parameters = {id(p) for head in heads for p in head.parameters()}
    for name, parameter in module.named_parameters():
        parameter.requires_grad = is_lora_parameter(name) or id(parameter) in head_parameters


def random_split(cells: np.ndarray, train_size: float, validation_size: float | None, seed: int) -> Split:
    """Shuffle ``cells`` and cut them into training, validation and test positions (each sorted)."""
    shuffled = np.random.RandomState(seed).permutation(cells)
    validation_size = 1 - train_size if validation_size is None else validation_size
    n_train = math.ceil(train_size * len(cells) - 1e-9)
    n_val = min(len(cells) - n_train, math.floor(validation_size * len(cells) + 1e-9))
    return (
        np.sort(shuffled[:n_train]),
        np.sort(shuffled[n_train : n_train + n_val]),
        np.sort(shuffled[n_train + n_val :]),
    )


@dataclass
class MaskedGeneTask(TrainingTask):
    """Masked-gene (continued) pretraining: every encoder parameter and the masked-gene head train."""

    stage = "training"
    mlm_probability: float = 0.15
    train_size: float = 0.9
    validation_size: float | None = None

    def validate(self, model: TrainableModel) -> None:
        super().validate(model)
        if not 0 < self.mlm_probability < 1:
            msg = f"mlm_probability must be in (0, 1), got {self.mlm_probability!r}."
            raise ValueError(msg)
        _check_fraction("train_size", self.train_size)
        if self.validation_size is not None:
            _check_fraction("validation_size", self.validation_size)
            if self.train_size + self.validation_size > 1 + 1e-9:
                msg = "train_size + validation_size must not exceed 1."
                raise ValueError(msg)

    def prepare(self, model: TrainableModel, info: EncodingInfo, seed: int) -> Prepared:
        split = random_split(info.encoded_cells(), self.train_size, self.validation_size, seed)
        if len(split[0]) == 0:
            msg = "No encoded cells to train on."
            raise ValueError(msg)
        return Prepared(split, {"mlm_probability": self.mlm_probability})

    def set_trainable(self, module) -> None:
        if has_lora(module.mlm.bert):
            train_adapters_and_heads(module)
            return
        for parameter in module.parameters():
            parameter.requires_grad = True


@dataclass
class CellClassificationTask(TrainingTask):
    """Cell classification by one or several ``.obs`` columns, with macro-F1 model selection.

    With several label columns, one head per column shares the encoder (multitask): the loss is the weighted sum of
    each task's cross-entropy over the cells labelled for it.
    """

    stage = "classifier"
    labels_key: str | list[str] | None = None
    loss_weights: list[float] | None = None
    pooling: str | None = None
    dropout: float = 0.1
    group_key: str | None = None
    train_size: float = 0.8
    validation_size: float = 0.1
    early_stopping_patience: int | None = 3
    test_cells: Any = None
    classes: dict[str, list[str]] = field(default_factory=dict, init=False)

    def tasks(self, model: TrainableModel) -> list[str]:
        """The label columns: the given ones, else the one registered with ``setup_anndata``."""
        if self.labels_key is None:
            registered = model.registry_["setup_args"].get("labels_key") if model.adata is not None else None
            return [] if registered is None else [registered]
        return [self.labels_key] if isinstance(self.labels_key, str) else list(self.labels_key)

    @property
    def multitask(self) -> bool:
        return len(self.classes) > 1

    def validate(self, model: TrainableModel) -> None:
        super().validate(model)
        tasks = self.tasks(model)
        if model.training_data is None or not tasks:
            msg = (
                "Cell classification needs labelled data: pass `labels_key=` (one .obs column, or several for a "
                "multitask classifier), or register it with `GeneformerModel.setup_anndata(adata, labels_key=...)`; "
                "the model needs the data too: `model = model.copy(adata)`, or "
                "`GeneformerModel.from_pretrained(name, adata)` / `GeneformerModel.load(path, adata)`."
            )
            raise ValueError(msg)
        missing = [t for t in tasks if t not in model.training_data.obs.columns]
        if missing:
            msg = f"labels_key {missing} not in .obs; available: {list(model.training_data.obs.columns)}."
            raise KeyError(msg)
        if len(set(tasks)) != len(tasks):
            msg = f"labels_key names a column twice: {tasks}."
            raise ValueError(msg)
        if self.loss_weights is not None and (
            len(self.loss_weights) != len(tasks) or any(not w >= 0 for w in self.loss_weights)
        ):
            msg = f"loss_weights needs one non-negative weight per label column ({len(tasks)}): {self.loss_weights}."
            raise ValueError(msg)
        pooling = self.pooling or model.module.classifier_pooling
        if pooling not in ("mean", "cls", "pooler"):
            msg = f"pooling must be 'mean', 'cls' or 'pooler', got {pooling!r}."
            raise ValueError(msg)
        if pooling == "cls" and not model.module.special_tokens:
            msg = "pooling='cls' needs a V2 model; use pooling='mean'."
            raise ValueError(msg)
        if pooling == "pooler" and model.module.pooler is None:
            msg = "pooling='pooler' needs BERT's pooler, which only classifiers loaded from checkpoints have."
            raise ValueError(msg)
        _check_fraction("dropout", self.dropout, upper_inclusive=False)
        _check_fraction("train_size", self.train_size)
        _check_fraction("validation_size", self.validation_size)
        if self.train_size + self.validation_size > 1 + 1e-9:
            msg = "train_size + validation_size must not exceed 1."
            raise ValueError(msg)
        if self.group_key is not None and self.group_key not in model.training_data.obs.columns:
            msg = f"group_key {self.group_key!r} is not an .obs column."
            raise KeyError(msg)
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            msg = f"early_stopping_patience must be a positive integer or None, got {self.early_stopping_patience!r}."
            raise ValueError(msg)

    def prepare(self, model: TrainableModel, info: EncodingInfo, seed: int) -> Prepared:
        import pandas as pd

        from .._data._anndata import cell_mask
        from ._classifier import split_cells

        adata = model.training_data
        tasks = self.tasks(model)
        codes = np.full((adata.n_obs, len(tasks)), -100, dtype=np.int64)
        classes = {}
        for column, task in enumerate(tasks):
            labels = pd.Series(adata.obs[task].to_numpy(dtype=object))
            labelled = labels.notna().to_numpy() & (info.lengths > 0)
            task_classes = sorted(map(str, pd.unique(labels[labelled])))
            if len(task_classes) < 2:
                msg = f"obs[{task!r}] needs at least two classes among encoded cells, found {task_classes}."
                raise ValueError(msg)
            codes[labelled, column] = pd.Categorical(labels[labelled].astype(str), categories=task_classes).codes
            classes[task] = task_classes
        usable = np.flatnonzero((codes >= 0).any(1))
        groups = None if self.group_key is None else adata.obs[self.group_key].astype(str).to_numpy()
        # stratified by the first task (cells without its label form their own stratum)
        strata = codes[:, 0]
        if self.test_cells is not None:
            held_out = cell_mask(adata, self.test_cells, argument="test_cells")
            test = usable[held_out[usable]]
            rest = usable[~held_out[usable]]
            share = self.train_size / max(self.train_size + self.validation_size, 1e-12)
            train, val, leftover = split_cells(
                strata[rest],
                groups=None if groups is None else groups[rest],
                train_size=share,
                validation_size=1 - share,
                seed=seed,
            )
            split = (np.sort(rest[np.concatenate([train, leftover])]), rest[val], test)
        else:
            train, val, test = split_cells(
                strata[usable],
                groups=None if groups is None else groups[usable],
                train_size=self.train_size,
                validation_size=self.validation_size,
                seed=seed,
            )
            split = (usable[train], usable[val], usable[test])
        self.classes = classes
        targets = codes if len(tasks) > 1 else codes[:, 0]
        return Prepared(split, {"labels": targets})

    def install(self, model: TrainableModel) -> None:
        pooling = self.pooling or model.module.classifier_pooling
        hidden = model.module.config.hidden_size
        if self.multitask:
            model.module.classifier = torch.nn.ModuleDict(
                {task: classification_head(hidden, len(c), self.dropout) for task, c in self.classes.items()}
            )
            weights = self.loss_weights or [1.0] * len(self.classes)
            model.module.task_weights = dict(zip(self.classes, map(float, weights), strict=True))
            model.classes = {task: list(c) for task, c in self.classes.items()}
        else:
            (task_classes,) = self.classes.values()
            model.module.classifier = classification_head(hidden, len(task_classes), self.dropout)
            model.classes = list(task_classes)
        model.module.classifier_pooling = pooling
        model.init_params_["non_kwargs"].update(classes=model.classes, classifier_pooling=pooling)

    def make_plan(self, module, plan_kwargs: dict) -> GeneformerTrainingPlan:
        n_classes = {t: len(c) for t, c in self.classes.items()} if self.multitask else len(*self.classes.values())
        return ClassifierTrainingPlan(module, n_classes=n_classes, **plan_kwargs)

    def callbacks(self, prepared: Prepared) -> list:
        if self.early_stopping_patience is None or not len(prepared.split[1]):
            return []
        from lightning.pytorch.callbacks import EarlyStopping

        return [EarlyStopping(monitor="validation_macro_f1", mode="max", patience=self.early_stopping_patience)]

    def finish(self, model: TrainableModel, plan, info: EncodingInfo, prepared: Prepared, execution: Execution):
        from ._classifier import classification_metrics

        if plan.best_state is not None:
            model.module.load_state_dict(plan.best_state)
        model.module.eval()
        test = prepared.split[2]
        quiet = execution.replace(progress_bar=False, devices=None, num_nodes=1)
        predicted = model.predict(None, test, soft=True, encoding_key=info.key, execution=quiet)
        targets = prepared.targets["labels"]
        if self.multitask:
            tasks = {}
            for column, (task, task_classes) in enumerate(self.classes.items()):
                labelled = targets[test, column] >= 0
                guesses = predicted[task].to_numpy()[labelled].argmax(1)
                tasks[task] = classification_metrics(targets[test, column][labelled], guesses, task_classes)
            report = {
                "tasks": tasks,
                "accuracy": float(np.mean([r["accuracy"] for r in tasks.values()])),
                "macro_f1": float(np.mean([r["macro_f1"] for r in tasks.values()])),
                "n_cells": int(len(test)),
            }
        else:
            (task_classes,) = self.classes.values()
            report = classification_metrics(targets[test], predicted.to_numpy().argmax(1), task_classes)
        report["validation_macro_f1"] = float(plan.best_macro_f1) if plan.best_state is not None else float("nan")
        report["test_cells"] = model.training_data.obs_names[test].to_numpy(dtype=str)
        return report


@dataclass
class GeneClassificationTask(TrainingTask):
    """Gene (token) classification: labelled genes' classes at their positions in the cells that hold them."""

    stage = "gene classifier"
    gene_labels: Mapping[str, Any] | str | GeneLabels | None = None
    dropout: float = 0.1
    validation_size: float = 0.1
    n_cells: int | None = None
    labels: GeneLabels | None = field(default=None, init=False)

    def validate(self, model: TrainableModel) -> None:
        super().validate(model)
        if model.training_data is None:
            msg = (
                "Gene classification trains on encoded data: create the model with it, e.g. "
                "`GeneformerModel.from_pretrained(name, adata)` or `model.copy(adata)`."
            )
            raise ValueError(msg)
        _check_fraction("dropout", self.dropout, upper_inclusive=False)
        _check_fraction("validation_size", self.validation_size, upper_inclusive=False)
        if self.n_cells is not None and (not isinstance(self.n_cells, int) or self.n_cells < 1):
            msg = f"n_cells must be a positive integer or None, got {self.n_cells!r}."
            raise ValueError(msg)

    def prepare(self, model: TrainableModel, info: EncodingInfo, seed: int) -> Prepared:
        from ._gene_classifier import GeneLabels, resolve_gene_labels

        labels = self.gene_labels
        if not isinstance(labels, GeneLabels):
            labels = resolve_gene_labels(info, labels)
        rng = np.random.default_rng(seed)
        cells = rng.permutation(np.flatnonzero(info.cells_holding(labels.tokens)))
        if self.n_cells is not None:
            cells = cells[: self.n_cells]
        n_val = math.floor(self.validation_size * len(cells) + 1e-9)
        if len(cells) - n_val < 1:
            msg = "No encoded cell holds a labelled gene to train on."
            raise ValueError(msg)
        self.labels = labels
        split = (np.sort(cells[n_val:]), np.sort(cells[:n_val]), np.array([], dtype=np.int64))
        return Prepared(split, {"token_labels": labels.lookup(model.module.config.vocab_size)})

    def install(self, model: TrainableModel) -> None:
        hidden = model.module.config.hidden_size
        model.module.gene_classifier = classification_head(hidden, len(self.labels.classes), self.dropout)
        model.gene_classes = list(self.labels.classes)
        model.init_params_["non_kwargs"].update(gene_classes=model.gene_classes)
