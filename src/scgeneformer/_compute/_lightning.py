"""Lightning at the package's verbosity: the ``Trainer`` defaults and the one predict harness.

The harness (:func:`lightning_predict`) runs inference (:mod:`._engine`) and distributed perturbation alike; its
callers combine the processes' results with :func:`gather_objects`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    import torch

    from ._execution import Execution


@contextmanager
def lightning_run():
    """Run Lightning at the package's verbosity.

    Its informational logging and harmless third-party warnings are shown only when ``sgf.settings.verbosity`` asks
    for information.

    Lightning prints device summaries and advertising tips at INFO level on every ``Trainer``; those are logged only
    at ``verbosity="info"`` or more. Its deprecation warning about ``LeafSpec`` (Lightning's own use of a torch
    API) is not ours to fix and is not shown, nor are its notes on custom batch samplers and on ``predict_step``
    returning nothing, which do not apply to our inference runs.
    """
    import logging
    import warnings

    from .._settings import settings

    names = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning")
    loggers = [logging.getLogger(name) for name in names]
    levels = [log.level for log in loggers]
    if settings.log_level > logging.INFO:
        for log in loggers:
            log.setLevel(max(log.level, logging.WARNING))
    # Lightning's "💡 Tip" records advertise its cloud services (litlogger, litmodels) on every Trainer, also at
    # "info": they say nothing about the run. Its loggers log through rank-zero helpers in these modules.
    rank_zero = [logging.getLogger(f"{name}.utilities.rank_zero") for name in names]
    for log in rank_zero:
        log.addFilter(_no_advertisements)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
            # Our inference runs use their own batch samplers, which never drop cells (tested), and their predict
            # steps collect results themselves instead of returning them: Lightning's notes on both do not apply.
            warnings.filterwarnings("ignore", message=r"You are using a custom batch sampler .* for prediction")
            warnings.filterwarnings("ignore", message=r"predict returned None if it was on purpose")
            yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)
        for log in rank_zero:
            log.removeFilter(_no_advertisements)


def _no_advertisements(record) -> bool:
    """Drop Lightning's advertising tips (see :func:`lightning_run`), keep every other record."""
    return not str(record.msg).startswith("💡 Tip")


def trainer_defaults(n_batches: int | None = None) -> dict[str, Any]:
    """Lightning ``Trainer`` defaults that follow ``sgf.settings``: progress bar, model summary, logging interval."""
    import logging

    from .._settings import settings

    defaults: dict[str, Any] = {
        "enable_progress_bar": settings.progress_bar,
        "enable_model_summary": settings.log_level <= logging.INFO,
    }
    if n_batches:
        defaults["log_every_n_steps"] = max(1, min(50, n_batches))
    return defaults


def lightning_predict(
    module: torch.nn.Module,
    loader: Iterable,
    execution: Execution,
    step: Callable[[torch.nn.Module, Any], None],
    at_end: Callable[[], None] | None = None,
) -> None:
    """The one predict harness: ``step(module, batch)`` on every batch of ``loader``, one process per device.

    Runs ``Trainer.predict`` with the execution's devices and strategy. ``step`` collects its results itself (each
    process sees only its own batches: the loader's sampler shares them out); ``at_end`` runs in every process once
    its batches are done, e.g. to combine the processes' results with :func:`gather_objects`. ``module`` runs in eval
    mode and is left on the CPU in the mode it had.
    """
    import lightning.pytorch as pl

    class StepPredictor(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.module = module

        def predict_step(self, batch, batch_idx) -> None:
            step(self.module, batch)

        def on_predict_epoch_end(self) -> None:
            if at_end is not None:
                at_end()

    was_training = module.training
    module.eval()
    try:
        with lightning_run():
            trainer = pl.Trainer(
                **execution.trainer_kwargs(),
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=execution.show_progress,
                enable_model_summary=False,
                use_distributed_sampler=False,
            )
            trainer.predict(StepPredictor(), dataloaders=loader, return_predictions=False)
    finally:
        module.train(was_training)
        module.cpu()


def in_distributed_run() -> bool:
    """Whether this process belongs to a running torch.distributed group."""
    import torch

    return torch.distributed.is_available() and torch.distributed.is_initialized()


def gather_objects(value: Any) -> list:
    """``value`` of every process of the running torch.distributed group, in rank order (``[value]`` outside one)."""
    import torch

    if not in_distributed_run():
        return [value]
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, value)
    return gathered


def wait_for_all_processes() -> None:
    """Return once every process of the running torch.distributed group gets here (at once outside one)."""
    import torch

    if in_distributed_run():
        torch.distributed.barrier()
