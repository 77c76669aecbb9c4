"""``sgf.tl.cell_classification_cv`` and ``sgf.tl.hyperparameter_search`` for cell classifiers.

Cross-validation says how well a classifier generalises (to new cells, or new donors); the search says which
fine-tuning settings make it best.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._compute._execution import Execution
from .._data._anndata import resolve_adata

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData
    from mudata import MuData

    from ..model import GeneformerModel


def _labels_of(adata: AnnData, labels_key: str | Sequence[str]) -> tuple[list[str], np.ndarray]:
    keys = [labels_key] if isinstance(labels_key, str) else list(labels_key)
    missing = [k for k in keys if k not in adata.obs.columns]
    if missing:
        msg = f"labels_key {missing} not in .obs; available: {list(adata.obs.columns)}."
        raise KeyError(msg)
    return keys, adata.obs[keys[0]].astype(str).to_numpy()


def cell_classification_cv(
    data: AnnData | MuData,
    model: GeneformerModel,
    labels_key: str | Sequence[str],
    *,
    n_folds: int = 5,
    group_key: str | None = None,
    seed: int = 0,
    key_added: str = "geneformer_cv",
    encoding_key: str = "geneformer",
    execution: Execution | Mapping | None = None,
    mod: str = "rna",
    inplace: bool = True,
    **train_kwargs,
) -> pd.DataFrame | None:
    """Cross-validate cell classification: k folds of cells (or of whole groups, e.g. donors), one copy per fold.

    Cells labelled in ``labels_key`` (its first column, for several) are split into ``n_folds`` folds, stratified by
    label (:class:`sklearn.model_selection.StratifiedKFold`) or, with ``group_key``, keeping each group in one fold
    (:class:`~sklearn.model_selection.StratifiedGroupKFold`), so that no cell, or no donor, is in two test folds.
    For each fold, a copy of ``model`` (``model`` itself is left unchanged) is fine-tuned as by
    :meth:`~scgeneformer.GeneformerModel.train_classifier` on the other folds (split into training and validation
    cells) and evaluated on the fold.

    Parameters
    ----------
    data
        Encoded AnnData (or MuData) with the labels.
    model
        The model to fine-tune in each fold (e.g. a pretrained one).
    labels_key
        ``.obs`` column(s) of the labels (several: a multitask classifier, metrics averaged over tasks).
    n_folds
        Number of folds.
    group_key
        ``.obs`` column of groups kept whole (donors, batches).
    seed
        Seed of the folds and of each fold's training.
    key_added
        Key of the results in ``.uns``.
    encoding_key, execution, mod
        As in :func:`scgeneformer.tl.embed` (``execution`` also for training).
    inplace
        Store ``{"folds": table, "test_fold": fold of each cell (-1: unlabelled)}`` in ``.uns[key_added]`` and
        return ``None``; with ``inplace=False`` return the table, with a ``test_cells`` column of obs names.
    **train_kwargs
        Arguments of :meth:`~scgeneformer.GeneformerModel.train_classifier` (``max_epochs``, ``plan_kwargs``,
        ``freeze_layers``…).

    Returns
    -------
    With ``inplace=False``, one row per fold: ``fold``, ``n_train``, ``n_validation``, ``n_test``, ``accuracy``,
    ``macro_f1``, ``validation_macro_f1`` and ``test_cells``.

    Examples
    --------
    >>> sgf.tl.cell_classification_cv(adata, model, "cell_type", n_folds=5, group_key="donor")  # doctest: +SKIP
    >>> adata.uns["geneformer_cv"]["folds"][["fold", "accuracy", "macro_f1"]]  # doctest: +SKIP
    """
    import pandas as pd
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    adata = resolve_adata(data, mod)
    model.encoding_info(data, encoding_key=encoding_key, mod=mod)
    keys, labels = _labels_of(adata, labels_key)
    encoded = adata.obs[f"{encoding_key}_n_tokens"].to_numpy() > 0
    usable = np.flatnonzero(adata.obs[keys[0]].notna().to_numpy() & encoded)
    if n_folds < 2:
        msg = f"n_folds must be at least 2, got {n_folds}."
        raise ValueError(msg)
    if group_key is not None:
        if group_key not in adata.obs.columns:
            msg = f"group_key {group_key!r} is not an .obs column."
            raise KeyError(msg)
        groups = adata.obs[group_key].astype(str).to_numpy()[usable]
        if len(np.unique(groups)) < n_folds:
            msg = f"group_key {group_key!r} has {len(np.unique(groups))} groups: fewer than n_folds={n_folds}."
            raise ValueError(msg)
        folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(
            usable, labels[usable], groups
        )
    else:
        folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(usable, labels[usable])
    execution = Execution.coerce(execution)
    test_fold = np.full(adata.n_obs, -1, dtype=np.int64)
    rows = []
    for fold, (_, test) in enumerate(folds):
        held_out = np.zeros(adata.n_obs, dtype=bool)
        held_out[usable[test]] = True
        test_fold[held_out] = fold
        fold_model = model.copy(adata, encoding_key=encoding_key)
        report = fold_model.train_classifier(
            labels_key=keys if len(keys) > 1 else keys[0],
            test_cells=held_out,
            group_key=group_key,
            seed=seed,
            execution=execution,
            **train_kwargs,
        )
        rows.append(
            {
                "fold": fold,
                "n_train": len(fold_model.train_indices),
                "n_validation": len(fold_model.validation_indices),
                "n_test": report["n_cells"],
                "accuracy": report["accuracy"],
                "macro_f1": report["macro_f1"],
                "validation_macro_f1": report["validation_macro_f1"],
                "test_cells": report["test_cells"],
            }
        )
        del fold_model
    table = pd.DataFrame(rows)
    if not inplace:
        return table
    adata.uns[key_added] = {"folds": table.drop(columns="test_cells"), "test_fold": test_fold}
    return None


#: Default search space: the reference's (learning rate, warm-up, frozen layers), as in its Ray Tune setup.
DEFAULT_SPACE: dict[str, Any] = {"lr": (1e-6, 1e-3), "warmup_steps": (0.0, 0.2), "freeze_layers": "all"}


def hyperparameter_search(
    data: AnnData | MuData,
    model: GeneformerModel,
    labels_key: str | Sequence[str],
    *,
    n_trials: int = 20,
    search_space: Mapping[str, Any] | None = None,
    seed: int = 0,
    prune: bool = True,
    timeout: float | None = None,
    key_added: str = "geneformer_search",
    encoding_key: str = "geneformer",
    execution: Execution | Mapping | None = None,
    mod: str = "rna",
    inplace: bool = True,
    **train_kwargs,
) -> dict | None:
    """Search fine-tuning settings of a cell classifier with Optuna, maximising validation macro-F1.

    Each trial fine-tunes a copy of ``model`` as by :meth:`~scgeneformer.GeneformerModel.train_classifier` (the same
    training/validation/test split in every trial, by ``seed``) with settings drawn by Optuna's TPE sampler, and is
    scored by the best epoch's validation macro-F1; the test cells are never used to choose. With ``prune``,
    trials whose validation macro-F1 falls behind are stopped early (Optuna's median pruner through its Lightning
    integration). Needs the ``search`` extra (``pip install 'scgeneformer[search]'``).

    Parameters
    ----------
    data
        Encoded AnnData (or MuData) with the labels.
    model
        The model each trial fine-tunes a copy of.
    labels_key
        ``.obs`` column(s) of the labels.
    n_trials
        Number of trials.
    search_space
        Settings to search, each a ``(low, high)`` range or a list of choices: ``lr`` (log scale), ``warmup_steps``
        (a fraction of all steps), ``weight_decay``, ``dropout``, ``max_epochs``, ``freeze_layers`` (``"all"``:
        0 to the number of layers − 1) and ``lora_r`` (LoRA rank; 0 = no adapters). Default: ``lr`` 1e-6–1e-3,
        ``warmup_steps`` 0–0.2 and ``freeze_layers``, the reference's.
    seed
        Seed of the sampler, of the split and of each trial's training.
    prune
        Stop unpromising trials early.
    timeout
        Stop the search after this many seconds.
    key_added, encoding_key, execution, mod
        As in :func:`cell_classification_cv`.
    inplace
        Store ``{"trials": table, "best": {...}}`` in ``.uns[key_added]`` and return ``None``, or return it.
    **train_kwargs
        Further arguments of :meth:`~scgeneformer.GeneformerModel.train_classifier` (e.g. ``max_epochs``).

    Returns
    -------
    With ``inplace=False``: ``{"trials": one row per trial (its settings, ``value`` = validation macro-F1,
    ``state``), "best": the best trial's settings and value}``.

    Examples
    --------
    >>> sgf.tl.hyperparameter_search(adata, model, "cell_type", n_trials=30, max_epochs=3)  # doctest: +SKIP
    >>> adata.uns["geneformer_search"]["best"]  # doctest: +SKIP
    """
    import pandas as pd

    from .._utils._optional import require

    optuna = require("optuna", "search")
    adata = resolve_adata(data, mod)
    model.encoding_info(data, encoding_key=encoding_key, mod=mod)
    keys, _ = _labels_of(adata, labels_key)
    space = dict(DEFAULT_SPACE if search_space is None else search_space)
    unknown = set(space) - {"lr", "warmup_steps", "weight_decay", "dropout", "max_epochs", "freeze_layers", "lora_r"}
    if unknown:
        msg = f"Unknown search_space settings {sorted(unknown)}."
        raise ValueError(msg)
    if "max_epochs" in space and "max_epochs" in train_kwargs:
        msg = "max_epochs is both searched and fixed; pass it in one place."
        raise ValueError(msg)
    execution = Execution.coerce(execution).replace(progress_bar=False)
    n_layers = model.module.n_layers

    def suggest(trial, name: str, spec):
        if isinstance(spec, list | tuple) and not (len(spec) == 2 and all(isinstance(v, int | float) for v in spec)):
            return trial.suggest_categorical(name, list(spec))
        if name == "freeze_layers":
            low, high = (0, n_layers - 1) if spec == "all" else spec
            return trial.suggest_int(name, int(low), int(high))
        low, high = spec
        if name in ("max_epochs", "lora_r"):
            return trial.suggest_int(name, int(low), int(high))
        return trial.suggest_float(name, float(low), float(high), log=name == "lr")

    def objective(trial) -> float:
        params = {name: suggest(trial, name, spec) for name, spec in space.items()}
        candidate = model.copy(adata, encoding_key=encoding_key)
        lora_r = params.pop("lora_r", 0)
        if lora_r:
            candidate.add_lora(r=int(lora_r), alpha=2 * int(lora_r))
        plan = {k: params.pop(k) for k in ("lr", "warmup_steps", "weight_decay") if k in params}
        kwargs = dict(train_kwargs)
        kwargs["plan_kwargs"] = dict(kwargs.get("plan_kwargs") or {}) | plan
        callbacks = list(kwargs.pop("callbacks", []))
        if prune:
            from optuna_integration import PyTorchLightningPruningCallback

            callbacks.append(PyTorchLightningPruningCallback(trial, monitor="validation_macro_f1"))
        report = candidate.train_classifier(
            labels_key=keys if len(keys) > 1 else keys[0],
            seed=seed,
            execution=execution,
            callbacks=callbacks,
            **params,
            **kwargs,
        )
        return report["validation_macro_f1"]

    sampler = optuna.samplers.TPESampler(seed=seed)
    pruner = optuna.pruners.MedianPruner(n_warmup_steps=1) if prune else optuna.pruners.NopPruner()
    verbosity = optuna.logging.get_verbosity()
    from .._settings import settings

    if settings.log_level > 20:  # Optuna reports every trial at INFO level: only at sgf's info verbosity
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
        study.optimize(objective, n_trials=n_trials, timeout=timeout)
    finally:
        optuna.logging.set_verbosity(verbosity)
    rows = []
    for trial in study.trials:
        rows.append({"trial": trial.number, **trial.params, "value": trial.value, "state": trial.state.name})
    trials = pd.DataFrame(rows)
    best = {**study.best_trial.params, "value": study.best_value, "trial": study.best_trial.number}
    result = {"trials": trials, "best": best}
    if not inplace:
        return result
    adata.uns[key_added] = result
    return None
