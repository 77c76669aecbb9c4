"""``sgf.tl.cell_classification_cv``, ``sgf.tl.baseline_classification_cv`` and ``sgf.tl.hyperparameter_search``.

Cross-validation says how well a classifier generalises (to new cells, or new donors), and whether fine-tuning
Geneformer beats logistic regression on the usual representations in the same folds; the search says which
fine-tuning settings make it best.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._compute._execution import Execution
from .._data._anndata import resolve_adata
from .._utils._text import counted

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


def cv_folds(
    adata: AnnData,
    label_key: str,
    *,
    n_folds: int,
    group_key: str | None,
    seed: int,
    encoding_key: str | None = None,
) -> np.ndarray:
    """The test fold of each cell (``-1``: not in any fold), as :func:`cell_classification_cv` makes them.

    The cells with a label (and, with ``encoding_key``, encoded) are split into ``n_folds`` folds, stratified by label
    (:class:`~sklearn.model_selection.StratifiedKFold`) or keeping each group whole
    (:class:`~sklearn.model_selection.StratifiedGroupKFold`), shuffled by ``seed``.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    usable = adata.obs[label_key].notna().to_numpy()
    if encoding_key is not None:
        usable &= adata.obs[f"{encoding_key}_n_tokens"].to_numpy() > 0
    usable = np.flatnonzero(usable)
    labels = adata.obs[label_key].astype(str).to_numpy()[usable]
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
        folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(usable, labels, groups)
    else:
        folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(usable, labels)
    test_fold = np.full(adata.n_obs, -1, dtype=np.int64)
    for fold, (_, test) in enumerate(folds):
        test_fold[usable[test]] = fold
    return test_fold


#: Baseline representations computed from the counts; any other name is an ``.obsm`` key.
_COMPUTED = ("pca", "hvg")


def _baseline_methods(baseline: bool | str | Sequence[str] | None) -> list[str]:
    if baseline is None or baseline is False:
        return []
    if baseline is True:
        return ["pca"]
    return [baseline] if isinstance(baseline, str) else list(baseline)


def _check_representations(adata: AnnData, representations: Sequence[str], layer: str | None) -> None:
    if layer is not None and layer not in adata.layers and any(r in _COMPUTED for r in representations):
        msg = f"layer {layer!r} is not in .layers; available: {list(adata.layers)}."
        raise KeyError(msg)
    missing = [r for r in representations if r not in _COMPUTED and r not in adata.obsm]
    if missing:
        msg = (
            f"Baseline representations {missing} are neither {list(_COMPUTED)} nor .obsm keys; "
            f"available: {list(adata.obsm)}."
        )
        raise KeyError(msg)


def _baseline_table(
    adata: AnnData,
    labels: np.ndarray,
    test_fold: np.ndarray,
    representations: Sequence[str],
    *,
    layer: str | None,
    seed: int,
    n_top_genes: int = 2000,
    n_comps: int = 50,
) -> pd.DataFrame:
    """Logistic regression on each representation, trained on each fold's other cells and tested on the fold."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ._baselines import highly_variable, hvg_pca, log_normalized

    usable = np.flatnonzero(test_fold >= 0)
    classes = sorted(np.unique(labels[usable]))
    lognorm = log_normalized(adata, layer, usable) if any(r in _COMPUTED for r in representations) else None
    obs_names = adata.obs_names.to_numpy()[usable]
    rows = []
    for representation in representations:
        if representation not in _COMPUTED:
            features_all = np.asarray(adata.obsm[representation])[usable]
            if not np.isfinite(features_all).all():
                msg = f"obsm[{representation!r}] has non-finite values in cells of the folds."
                raise ValueError(msg)
        for fold in range(int(test_fold.max()) + 1):
            test = test_fold[usable] == fold
            train = np.flatnonzero(~test)
            if representation == "pca":
                features = hvg_pca(lognorm, fit=train, n_top_genes=n_top_genes, n_comps=n_comps, seed=seed)
            elif representation == "hvg":
                features = lognorm[:, highly_variable(lognorm, train, n_top_genes)]
            else:
                features = features_all
            classifier = make_pipeline(
                StandardScaler(with_mean=representation != "hvg"),
                LogisticRegression(max_iter=1000, random_state=seed),
            )
            classifier.fit(features[train], labels[usable][train])
            true, predicted = labels[usable][test], classifier.predict(features[test])
            rows.append(
                {
                    "method": f"logreg_{representation}",
                    "fold": fold,
                    "n_train": len(train),
                    "n_validation": 0,
                    "n_test": int(test.sum()),
                    "accuracy": float(accuracy_score(true, predicted)),
                    "macro_f1": float(f1_score(true, predicted, labels=classes, average="macro", zero_division=0)),
                    "validation_macro_f1": float("nan"),
                    "test_cells": list(obs_names[test]),
                }
            )
    return pd.DataFrame(rows)


def cell_classification_cv(
    data: AnnData | MuData,
    model: GeneformerModel,
    labels_key: str | Sequence[str],
    *,
    n_folds: int = 5,
    group_key: str | None = None,
    seed: int = 0,
    baseline: bool | str | Sequence[str] = False,
    layer: str | None = None,
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
    baseline
        Also train logistic regression in the same folds (on all of each fold's other cells), as
        :func:`baseline_classification_cv` does: ``True`` on the PCA of log-normalised highly variable genes
        (``"pca"``), or the representation(s) to use: ``"pca"``, ``"hvg"`` (the log-normalised highly variable genes
        themselves) or ``.obsm`` keys (e.g. ``"X_geneformer"``: a linear probe of the frozen embedding). Genes and
        components are chosen on each fold's training cells only.
    layer
        Layer with the raw counts for the ``"pca"``/``"hvg"`` baselines (default: ``X``).
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
    With ``inplace=False``, one row per fold and method: ``method`` (``"geneformer"``, and with ``baseline``
    ``"logreg_<representation>"``, e.g. ``"logreg_pca"``), ``fold``, ``n_train``, ``n_validation``, ``n_test``,
    ``accuracy``, ``macro_f1``, ``validation_macro_f1`` (NaN for the baselines, which have no validation cells) and
    ``test_cells``. The test cells of a fold are the same for every method.

    Examples
    --------
    >>> sgf.tl.cell_classification_cv(adata, model, "cell_type", n_folds=5, group_key="donor")  # doctest: +SKIP
    >>> adata.uns["geneformer_cv"]["folds"][["fold", "accuracy", "macro_f1"]]  # doctest: +SKIP

    Against logistic regression on PCA of highly variable genes, in the same folds:

    >>> sgf.tl.cell_classification_cv(adata, model, "cell_type", baseline=True, max_epochs=3)  # doctest: +SKIP
    >>> adata.uns["geneformer_cv"]["folds"].groupby("method")[["accuracy", "macro_f1"]].mean()  # doctest: +SKIP
    """
    import pandas as pd

    adata = resolve_adata(data, mod)
    model.encoding_info(data, encoding_key=encoding_key, mod=mod)
    keys, labels = _labels_of(adata, labels_key)
    methods = _baseline_methods(baseline)
    if methods:
        _check_representations(adata, methods, layer)
    test_fold = cv_folds(adata, keys[0], n_folds=n_folds, group_key=group_key, seed=seed, encoding_key=encoding_key)
    execution = Execution.coerce(execution)
    rows = []
    for fold in range(n_folds):
        held_out = test_fold == fold
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
                "method": "geneformer",
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
    if methods:
        baselines = _baseline_table(adata, labels, test_fold, methods, layer=layer, seed=seed)
        table = pd.concat([table, baselines], ignore_index=True)
    if not inplace:
        return table
    adata.uns[key_added] = {"folds": table.drop(columns="test_cells"), "test_fold": test_fold}
    return None


def baseline_classification_cv(
    data: AnnData | MuData,
    labels_key: str,
    *,
    use_rep: str | Sequence[str] = "pca",
    folds: str | np.ndarray | None = None,
    n_folds: int = 5,
    group_key: str | None = None,
    seed: int = 0,
    layer: str | None = None,
    n_top_genes: int = 2000,
    n_comps: int = 50,
    key_added: str = "baseline_cv",
    encoding_key: str = "geneformer",
    mod: str = "rna",
    inplace: bool = True,
) -> pd.DataFrame | None:
    """Cross-validate logistic regression on standard representations, in the folds of :func:`cell_classification_cv`.

    The baseline a fine-tuned Geneformer classifier has to beat: for each fold, scikit-learn's
    :class:`~sklearn.linear_model.LogisticRegression` (on standardised features) is trained on the other folds' cells
    and tested on the fold. The ``"pca"`` and ``"hvg"`` representations are computed from raw counts as scanpy's
    standard workflow does (``normalize_total`` to 10,000, ``log1p``, ``highly_variable_genes(flavor="seurat")``,
    ``pca``), with genes and components chosen on each fold's training cells only; the data are not modified.

    Parameters
    ----------
    data
        AnnData (or MuData) with raw counts (in ``X`` or ``layer``) and the labels.
    labels_key
        ``.obs`` column of the labels.
    use_rep
        Representation(s) to classify from: ``"pca"`` (PCA of the log-normalised highly variable genes),
        ``"hvg"`` (the log-normalised highly variable genes) or ``.obsm`` keys (``"X_geneformer"``: a linear probe
        of the Geneformer embedding; ``"X_scVI"``…).
    folds
        The folds: ``None`` makes those :func:`cell_classification_cv` makes with the same ``n_folds``,
        ``group_key`` and ``seed`` (over the labelled cells, and only the encoded ones when the data are encoded
        with ``encoding_key``); the ``.uns`` key of an earlier cross-validation (its ``"test_fold"``, e.g.
        ``"geneformer_cv"``); or the test fold of each cell (``-1``: not used).
    n_folds, group_key, seed
        As in :func:`cell_classification_cv` (when ``folds`` is ``None``); ``seed`` also seeds the PCA.
    layer
        Layer with the raw counts (default: ``X``).
    n_top_genes, n_comps
        Number of highly variable genes and of principal components.
    key_added
        Key of the results in ``.uns``.
    encoding_key, mod
        As in :func:`scgeneformer.tl.embed`.
    inplace
        Store ``{"folds": table, "test_fold": ...}`` in ``.uns[key_added]`` and return ``None``, or return the table.

    Returns
    -------
    With ``inplace=False``, one row per representation and fold, with the columns of :func:`cell_classification_cv`
    (``method`` is ``"logreg_<representation>"``).

    Examples
    --------
    >>> sgf.tl.cell_classification_cv(adata, model, "cell_type", max_epochs=3)  # doctest: +SKIP
    >>> reps = ["pca", "X_geneformer"]
    >>> sgf.tl.baseline_classification_cv(adata, "cell_type", use_rep=reps, folds="geneformer_cv")  # doctest: +SKIP
    >>> adata.uns["baseline_cv"]["folds"].groupby("method")["macro_f1"].mean()  # doctest: +SKIP
    """
    adata = resolve_adata(data, mod)
    if labels_key not in adata.obs.columns:
        msg = f"labels_key {labels_key!r} not in .obs; available: {list(adata.obs.columns)}."
        raise KeyError(msg)
    representations = [use_rep] if isinstance(use_rep, str) else list(use_rep)
    if not representations:
        msg = "use_rep names no representation."
        raise ValueError(msg)
    _check_representations(adata, representations, layer)
    if folds is None:
        encoded = encoding_key if f"{encoding_key}_n_tokens" in adata.obs.columns else None
        test_fold = cv_folds(adata, labels_key, n_folds=n_folds, group_key=group_key, seed=seed, encoding_key=encoded)
    else:
        if isinstance(folds, str):
            if folds not in adata.uns or "test_fold" not in adata.uns[folds]:
                msg = f"folds={folds!r} names no cross-validation result in .uns (with a 'test_fold')."
                raise KeyError(msg)
            folds = adata.uns[folds]["test_fold"]
        test_fold = np.asarray(folds, dtype=np.int64)
        if test_fold.shape != (adata.n_obs,):
            msg = f"folds has shape {test_fold.shape}; expected one fold per cell ({adata.n_obs},)."
            raise ValueError(msg)
        unlabelled = (test_fold >= 0) & adata.obs[labels_key].isna().to_numpy()
        if unlabelled.any():
            n = int(unlabelled.sum())
            msg = f"{counted(n, 'cell')} of the folds {'has' if n == 1 else 'have'} no label in {labels_key!r}."
            raise ValueError(msg)
    labels = adata.obs[labels_key].astype(str).to_numpy()
    table = _baseline_table(
        adata, labels, test_fold, representations, layer=layer, seed=seed, n_top_genes=n_top_genes, n_comps=n_comps
    )
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
