"""Training plan and ``train`` for Geneformer models (masked-gene pretraining on the scvi-tools/Lightning stack)."""

from __future__ import annotations

import math

import torch
from scvi.train import TrainingPlan


class GeneformerTrainingPlan(TrainingPlan):
    """scvi-tools training plan with BERT's optimiser: AdamW (no decay on biases and LayerNorm) and warm-up.

    Parameters
    ----------
    module
        The :class:`~scgeneformer.model.GeneformerModule`.
    lr, weight_decay
        AdamW learning rate and weight decay.
    warmup_steps
        Linear warm-up steps (an int) or fraction of all steps (a float below 1).
    schedule
        ``"linear"`` or ``"cosine"`` decay to 0 after warm-up, or ``"constant"``.
    """

    def __init__(
        self,
        module,
        *,
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        warmup_steps: int | float = 0.05,
        schedule: str = "linear",
        **kwargs,
    ) -> None:
        super().__init__(module, lr=lr, weight_decay=weight_decay, optimizer="AdamW", **kwargs)
        if schedule not in ("linear", "cosine", "constant"):
            msg = f"schedule must be 'linear', 'cosine' or 'constant', got {schedule!r}."
            raise ValueError(msg)
        self.warmup_steps = warmup_steps
        self.schedule = schedule

    def compute_and_log_metrics(self, loss_output, metrics, mode):
        """scvi-tools' metric logging, under ``no_grad`` instead of ``inference_mode``.

        Lightning syncs logged values across DDP processes with in-place updates, which inference-mode tensors
        forbid, so the original (decorated with ``torch.inference_mode``) fails in multi-process training.
        """
        with torch.no_grad():
            TrainingPlan.compute_and_log_metrics.__wrapped__(self, loss_output, metrics, mode)

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, parameter in self.module.named_parameters():
            if parameter.requires_grad:
                (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(parameter)
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
