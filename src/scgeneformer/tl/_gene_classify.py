"""``sgf.tl.classify_genes`` and ``sgf.tl.gene_classification_cv``: gene classes from a fine-tuned Geneformer."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._compute._execution import Execution
from .._data._anndata import copy_data, resolve_adata, show_in_mudata, writable_names
from ..model import GeneLabels

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import pandas as pd
    from anndata import AnnData
    from mudata import MuData

    from ..model import GeneformerModel


def classify_genes(
    data: AnnData | MuData,
    model: GeneformerModel,
    *,
    key_added: str = "geneformer_gene_class",
    encoding_key: str = "geneformer",
    execution: Execution | Mapping | None = None,
    mod: str = "rna",
    copy: bool = False,
) -> AnnData | MuData | None:
    """Predict gene classes with a model fine-tuned by :meth:`~scgeneformer.GeneformerModel.train_gene_classifier`.

    The model classifies every gene token of every encoded cell; a gene's class probabilities are the mean of its
    per-token probabilities over the cells whose encoding holds it. The data only need to be rank-encoded with the
    model's vocabulary.

    Parameters
    ----------
    data
        Encoded AnnData (or MuData).
    model
        A fine-tuned gene classifier.
    key_added
        Where the results go (see Returns).
    encoding_key, execution, mod
        As in :func:`scgeneformer.tl.embed`.
    copy
        Return a copy with the results instead of writing into ``data``.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Written keys:

    ``.var[f"{key_added}_{class}"]``
        Each class's probability (NaN for genes in no encoded cell).
    ``.var[key_added]``
        The most probable class (categorical, NaN for genes in no encoded cell).
    ``.var[f"{key_added}_n_cells"]``
        The number of cells averaged over.
    ``.uns[key_added]``
        Parameters and classes.

    Examples
    --------
    >>> sgf.tl.classify_genes(adata, model)  # doctest: +SKIP
    >>> adata.var["geneformer_gene_class"].value_counts()  # doctest: +SKIP
    """
    import pandas as pd

    if copy:
        data = copy_data(data)
    adata = resolve_adata(data, mod)
    info = model.encoding_info(data, encoding_key=encoding_key, mod=mod)
    cells = info.encoded_cells()
    probabilities = model.predict_genes(data, cells, soft=True, encoding_key=encoding_key, mod=mod, execution=execution)
    values = probabilities.to_numpy()
    classes = list(probabilities.columns)
    token = info.var_token
    n_cells = np.zeros(adata.n_vars, dtype=np.int64)
    occurrences = info.token_occurrences(cells)
    in_vocabulary = token >= 0
    n_cells[in_vocabulary] = occurrences[token[in_vocabulary]]
    for i, name in enumerate(writable_names(classes)):  # "/" in a class name becomes "_" in its column name
        adata.var[f"{key_added}_{name}"] = values[:, i]
    seen = ~np.isnan(values).any(1)
    codes = np.full(adata.n_vars, -1)
    codes[seen] = values[seen].argmax(1)
    adata.var[key_added] = pd.Categorical.from_codes(codes, categories=classes)
    adata.var[f"{key_added}_n_cells"] = n_cells
    show_in_mudata(
        data, mod, var=[f"{key_added}_{name}" for name in writable_names(classes)] + [key_added, f"{key_added}_n_cells"]
    )
    adata.uns[key_added] = {
        "params": {"model": model.checkpoint or "", "encoding_key": encoding_key},
        "classes": classes,
    }
    return data if copy else None


def gene_classification_cv(
    data: AnnData | MuData,
    model: GeneformerModel,
    gene_labels: Mapping[str, Sequence[str]] | str,
    *,
    n_folds: int = 5,
    seed: int = 0,
    key_added: str = "geneformer_gene_cv",
    encoding_key: str = "geneformer",
    execution: Execution | Mapping | None = None,
    mod: str = "rna",
    inplace: bool = True,
    **train_kwargs,
) -> pd.DataFrame | None:
    """Cross-validate gene classification: k folds over the labelled genes, a fine-tuned copy of the model per fold.

    The labelled genes that occur in encoded cells are split into ``n_folds`` folds stratified by class
    (:class:`sklearn.model_selection.StratifiedKFold` with shuffling). For each fold, a copy of ``model`` (e.g. a
    pretrained one; ``model`` itself is left unchanged) is fine-tuned as by
    :meth:`~scgeneformer.GeneformerModel.train_gene_classifier` with the other folds' genes labelled, then predicts
    the fold's genes: a gene's class probabilities are the mean over its occurrences in the encoded cells.

    Parameters
    ----------
    data
        Encoded AnnData (or MuData). Data not yet registered with
        :meth:`~scgeneformer.GeneformerModel.setup_anndata` are registered with its defaults.
    model
        The model to fine-tune in each fold.
    gene_labels
        ``{class: [genes]}`` or a ``.var`` column of classes, as in
        :meth:`~scgeneformer.GeneformerModel.train_gene_classifier`.
    n_folds
        Number of folds; every class needs at least this many labelled genes.
    seed
        Seed of the folds and of each fold's training.
    key_added
        Key of the table in ``.uns``.
    encoding_key, execution, mod
        As in :func:`scgeneformer.tl.embed` (``execution`` for training and predictions).
    inplace
        Store the table in ``.uns[key_added]`` and return ``None``; with ``inplace=False`` return it.
    **train_kwargs
        Arguments of :meth:`~scgeneformer.GeneformerModel.train_gene_classifier`, e.g. ``max_epochs``,
        ``freeze_layers``, ``plan_kwargs`` or ``enable_progress_bar``.

    Returns
    -------
    With ``inplace=False``, one row per fold: ``fold``, ``n_train_genes``, ``n_test_genes``, ``roc_auc`` (of the
    second class's probability for two classes, one-vs-rest macro average for more), ``macro_f1`` and ``accuracy`` of
    the held-out genes.

    Examples
    --------
    >>> table = sgf.tl.gene_classification_cv(adata, model, "dosage_class", n_folds=5, inplace=False)  # doctest: +SKIP
    """
    import pandas as pd
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    adata = resolve_adata(data, mod)
    info = model.encoding_info(data, encoding_key=encoding_key, mod=mod)
    labels = GeneLabels.resolve(info, gene_labels)
    per_class = np.bincount(labels.codes, minlength=len(labels.classes))
    if n_folds < 2:
        msg = f"n_folds must be at least 2, got {n_folds}."
        raise ValueError(msg)
    if per_class.min() < n_folds:
        counts = ", ".join(f"{c}: {n}" for c, n in zip(labels.classes, per_class, strict=True))
        msg = f"Every class needs at least n_folds={n_folds} labelled genes in the encoded cells ({counts})."
        raise ValueError(msg)
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    class_codes = np.arange(len(labels.classes))
    quiet = Execution.coerce(execution).replace(progress_bar=False)
    rows = []
    for fold, (train, test) in enumerate(folds.split(labels.tokens, labels.codes)):
        fold_model = model.copy(adata, encoding_key=encoding_key)
        fold_model.train_gene_classifier(labels.subset(train), seed=seed, execution=execution, **train_kwargs)
        test_labels = labels.subset(test)
        cells = info.cells_holding(test_labels.tokens)
        per_var = fold_model.predict_genes(data, cells, soft=True, encoding_key=encoding_key, mod=mod, execution=quiet)
        probabilities = per_var.to_numpy()[test_labels.var].astype(np.float64)
        true, predicted = test_labels.codes, probabilities.argmax(1)
        if len(np.unique(true)) < 2:
            auc = float("nan")
        elif len(class_codes) == 2:
            auc = float(roc_auc_score(true, probabilities[:, 1]))
        else:
            probabilities /= probabilities.sum(1, keepdims=True)
            auc = float(roc_auc_score(true, probabilities, multi_class="ovr", average="macro", labels=class_codes))
        rows.append(
            {
                "fold": fold,
                "n_train_genes": len(train),
                "n_test_genes": len(test),
                "roc_auc": auc,
                "macro_f1": float(f1_score(true, predicted, labels=class_codes, average="macro", zero_division=0)),
                "accuracy": float(accuracy_score(true, predicted)),
            }
        )
        del fold_model
    table = pd.DataFrame(rows)
    if not inplace:
        return table
    adata.uns[key_added] = table
    return None
