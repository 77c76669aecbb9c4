"""Lightning runs at the package's verbosity: the ``Trainer`` defaults and one predict harness for inference."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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


def lightning_predict(module, lightning_module, loader, execution: Execution) -> None:
    """Run ``lightning_module`` (wrapping ``module``) over ``loader`` with ``Trainer.predict``, one process per device.

    The steps collect their results themselves; ``module`` runs in eval mode and is left on the CPU in the mode it
    had.
    """
    import lightning.pytorch as pl

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
            trainer.predict(lightning_module, dataloaders=loader, return_predictions=False)
    finally:
        module.train(was_training)
        module.cpu()
