"""Training plans of Geneformer models on the scvi-tools/Lightning stack: BERT's optimiser and warm-up schedule."""

from __future__ import annotations

import copy
import inspect
import math

import numpy as np
import torch
from scvi.train import TrainingPlan

#: The documented defaults of every fine-tuning and pretraining run (the reference's fine-tuning values).
PLAN_DEFAULTS = {"lr": 5e-5, "weight_decay": 0.001, "warmup_steps": 0.05, "schedule": "linear"}
SCHEDULES = ("linear", "cosine", "constant")


class GeneformerTrainingPlan(TrainingPlan):
    """scvi-tools training plan with BERT's optimiser: AdamW with weight decay on matrices only, and warm-up.

    Parameters
    ----------
    module
        The :class:`~scgeneformer.model.GeneformerModule`.
    lr, weight_decay
        AdamW learning rate and weight decay. Following nanoGPT, weight decay applies to parameters with two or more
        dimensions (weight matrices and embeddings), never to biases and LayerNorm parameters.
    warmup_steps
        Linear warm-up steps (an int) or fraction of all steps (a float below 1).
    schedule
        ``"linear"`` or ``"cosine"`` decay to 0 after warm-up, or ``"constant"``.
    attention_dropout
        Apply the model's dropout to attention probabilities while training. ``None`` (default): on CUDA, where
        fused attention kernels include dropout, but not on CPU or MPS, where dropout inside attention makes
        PyTorch fall back to unfused attention (a training step takes about 2.5 times as long). Dropout on hidden
        states is applied either way. ``True`` trains exactly like the reference everywhere.
    **kwargs
        Further :class:`scvi.train.TrainingPlan` arguments.

    Examples
    --------
    >>> model.train(plan_kwargs={"lr": 1e-4, "schedule": "cosine", "warmup_steps": 500})  # doctest: +SKIP
    """

    def __init__(
        self,
        module,
        *,
        lr: float = PLAN_DEFAULTS["lr"],
        weight_decay: float = PLAN_DEFAULTS["weight_decay"],
        warmup_steps: int | float = PLAN_DEFAULTS["warmup_steps"],
        schedule: str = PLAN_DEFAULTS["schedule"],
        attention_dropout: bool | None = None,
        **kwargs,
    ) -> None:
        check_plan_kwargs({"lr": lr, "weight_decay": weight_decay, "warmup_steps": warmup_steps, "schedule": schedule})
        super().__init__(module, lr=lr, weight_decay=weight_decay, optimizer="AdamW", **kwargs)
        self.warmup_steps = warmup_steps
        self.schedule = schedule
        self.attention_dropout = attention_dropout
        self._attention_dropout_saved: list = []

    def on_fit_start(self) -> None:
        """Switch attention-probability dropout off for this run where it is not wanted (see ``attention_dropout``)."""
        keep = self.device.type == "cuda" if self.attention_dropout is None else self.attention_dropout
        if keep:
            return
        for layer in self.module.mlm.bert.encoder.layer:
            dropout = layer.attention.self.dropout
            self._attention_dropout_saved.append((dropout, dropout.p))
            dropout.p = 0.0

    def on_fit_end(self) -> None:
        """Restore the attention dropout that :meth:`on_fit_start` switched off."""
        for dropout, p in self._attention_dropout_saved:
            dropout.p = p
        self._attention_dropout_saved = []

    def initialize_train_metrics(self) -> None:
        """No ELBO metrics: scvi-tools' variational metrics mean nothing for BERT (see :meth:`compute_and_log_metrics`).

        scvi-tools makes them submodules of the plan, so that Lightning's model summary listed ``elbo_train``,
        ``kl_local_train`` … beside the model.
        """
        self.train_metrics = {}

    def initialize_val_metrics(self) -> None:
        """No ELBO metrics for validation either (see :meth:`initialize_train_metrics`)."""
        self.val_metrics = {}

    def compute_and_log_metrics(self, loss_output, metrics, mode):
        """Log the task's metrics (``accuracy_train``, ``masked_accuracy_validation`` …), under ``no_grad``.

        scvi-tools' version logs variational (ELBO/KL) metrics that mean nothing for BERT and runs under
        ``torch.inference_mode``, whose tensors Lightning cannot sync across DDP processes.
        """
        with torch.no_grad():
            n_obs = loss_output.n_obs_minibatch
            for key, value in loss_output.extra_metrics.items():
                if isinstance(value, torch.Tensor) and value.dim() != 0:
                    continue  # only scalars are logged
                value = value.detach() if isinstance(value, torch.Tensor) else value
                self.log(
                    f"{key}_{mode}",
                    value,
                    on_step=self.on_step,
                    on_epoch=self.on_epoch,
                    batch_size=n_obs,
                    sync_dist=self.use_sync_dist,
                )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep the random state of dropout, so that a resumed run continues like an uninterrupted one."""
        checkpoint["sgf_torch_rng"] = torch.get_rng_state()
        if torch.cuda.is_available():
            checkpoint["sgf_cuda_rng"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore what :meth:`on_save_checkpoint` kept."""
        if "sgf_torch_rng" in checkpoint:
            torch.set_rng_state(checkpoint["sgf_torch_rng"])
        if "sgf_cuda_rng" in checkpoint and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint["sgf_cuda_rng"])

    def configure_optimizers(self):
        decay, no_decay = [], []
        for parameter in self.module.parameters():
            if parameter.requires_grad:
                (decay if parameter.dim() >= 2 else no_decay).append(parameter)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr,
            betas=(0.9, 0.999),
            eps=1e-8,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(self.warmup_steps * total) if isinstance(self.warmup_steps, float) else int(self.warmup_steps)
        schedule = self.schedule

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            if schedule == "constant":
                return 1.0
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 1.0 - progress if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class ClassifierTrainingPlan(GeneformerTrainingPlan):
    """Training plan for cell classification: logs validation macro-F1 and keeps the weights of the best epoch.

    With several tasks (``n_classes`` a dict), each task's macro-F1 is logged (``validation_macro_f1_<task>``) and
    their mean selects the best epoch.

    Examples
    --------
    >>> report = model.train_classifier(plan_kwargs={"lr": 1e-4})  # builds this plan  # doctest: +SKIP
    """

    def __init__(self, module, *, n_classes: int | dict[str, int], **kwargs) -> None:
        super().__init__(module, **kwargs)
        self.n_classes = n_classes
        self._predicted: list[torch.Tensor] = []
        self._true: list[torch.Tensor] = []
        self.best_macro_f1 = -1.0
        self.best_state: dict | None = None

    def validation_step(self, batch, batch_idx):
        _, generative, loss = self.forward(batch, loss_kwargs=self.loss_kwargs)
        self.log(
            "validation_loss", loss.loss, on_epoch=True, sync_dist=self.use_sync_dist, batch_size=len(batch["labels"])
        )
        self.compute_and_log_metrics(loss, self.val_metrics, "validation")
        logits = generative["class_logits"]
        if isinstance(logits, dict):
            predicted = torch.stack([task_logits.argmax(-1) for task_logits in logits.values()], dim=1)
        else:
            predicted = logits.argmax(-1)
        self._predicted.append(predicted.detach().cpu())
        self._true.append(batch["labels"].detach().cpu())

    def on_validation_epoch_end(self) -> None:
        if not self._true:
            return
        from sklearn.metrics import f1_score

        true, predicted = torch.cat(self._true).numpy(), torch.cat(self._predicted).numpy()
        self._predicted, self._true = [], []
        sizes = self.n_classes if isinstance(self.n_classes, dict) else {None: self.n_classes}
        scores = []
        for column, (task, n) in enumerate(sizes.items()):
            t, p = (true, predicted) if task is None else (true[:, column], predicted[:, column])
            labelled = t != -100
            score = f1_score(t[labelled], p[labelled], labels=np.arange(n), average="macro", zero_division=0)
            scores.append(float(score))
            if task is not None:
                self.log(f"validation_macro_f1_{task}", float(score), sync_dist=self.use_sync_dist)
        macro_f1 = float(np.mean(scores))
        self.log("validation_macro_f1", macro_f1, sync_dist=self.use_sync_dist)
        if macro_f1 > self.best_macro_f1:
            self.best_macro_f1 = macro_f1
            self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.module.state_dict().items()})


def check_plan_kwargs(plan_kwargs: dict | None, plan_cls: type = GeneformerTrainingPlan) -> dict:
    """Validate ``plan_kwargs`` (names and values) before anything is trained or changed; returns a copy."""
    plan_kwargs = dict(plan_kwargs or {})
    accepted = set(inspect.signature(GeneformerTrainingPlan.__init__).parameters) | set(
        inspect.signature(TrainingPlan.__init__).parameters
    )
    accepted -= {"self", "module", "kwargs", "loss_kwargs", "optimizer", "optimizer_creator"}
    unknown = sorted(set(plan_kwargs) - accepted)
    if unknown:
        msg = (
            f"Unknown plan_kwargs {unknown}; accepted: lr, weight_decay, warmup_steps, schedule and {sorted(accepted)}."
        )
        raise TypeError(msg)
    lr = plan_kwargs.get("lr", PLAN_DEFAULTS["lr"])
    if not (isinstance(lr, int | float) and lr > 0):
        msg = f"lr must be a positive number, got {lr!r}."
        raise ValueError(msg)
    weight_decay = plan_kwargs.get("weight_decay", PLAN_DEFAULTS["weight_decay"])
    if not (isinstance(weight_decay, int | float) and weight_decay >= 0):
        msg = f"weight_decay must be a non-negative number, got {weight_decay!r}."
        raise ValueError(msg)
    warmup = plan_kwargs.get("warmup_steps", PLAN_DEFAULTS["warmup_steps"])
    if isinstance(warmup, bool) or not (
        isinstance(warmup, int) and warmup >= 0 or isinstance(warmup, float) and 0 <= warmup < 1
    ):
        msg = f"warmup_steps must be a number of steps (int >= 0) or a fraction of all steps in [0, 1), got {warmup!r}."
        raise ValueError(msg)
    schedule = plan_kwargs.get("schedule", PLAN_DEFAULTS["schedule"])
    if schedule not in SCHEDULES:
        msg = f"schedule must be one of {SCHEDULES}, got {schedule!r}."
        raise ValueError(msg)
    return plan_kwargs


def train_runner(model, **kwargs):
    """scvi-tools' ``TrainRunner`` whose Trainer takes Lightning checkpoint callbacks without adding scvi-tools' own.

    A ``ModelCheckpoint`` requires ``enable_checkpointing=True``, and with it scvi-tools' Trainer adds a
    ``SaveCheckpoint`` that saves model folders into ``./scvi_log`` (the working directory) and switches the module
    between modes. Only the checkpoints asked for are wanted: they are added after the Trainer is built.
    """
    from lightning.pytorch.callbacks import Checkpoint
    from scvi.train import Trainer, TrainRunner

    checkpoints = [c for c in kwargs.get("callbacks", []) if isinstance(c, Checkpoint)]
    if checkpoints:
        kwargs["callbacks"] = [c for c in kwargs["callbacks"] if not isinstance(c, Checkpoint)]
        kwargs["enable_checkpointing"] = False

    class CheckpointingTrainer(Trainer):
        def __init__(self, *args, **trainer_kwargs) -> None:
            super().__init__(*args, **trainer_kwargs)
            self.callbacks.extend(checkpoints)  # Lightning runs checkpoint callbacks last, as here

    class Runner(TrainRunner):
        _trainer_cls = CheckpointingTrainer

    return Runner(model, **kwargs)
