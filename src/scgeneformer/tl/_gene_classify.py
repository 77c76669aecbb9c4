"""``sgf.tl.classify_genes`` and ``sgf.tl.gene_classification_cv``: gene classes from a fine-tuned Geneformer."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._data import resolve_adata

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import pandas as pd
    from anndata import AnnData
    from mudata import MuData

    from ..model import GeneformerModel
    from ..pp._input_ids import EncodingInfo


def token_class_probabilities(
    model: GeneformerModel,
    info: EncodingInfo,
    cells: np.ndarray,
    *,
    token_budget: int | None = None,
    device: str | None = None,
    precision: str = "auto",
    progress_bar: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Gene-class probabilities of every token id, averaged over its occurrences in ``cells``.

    Returns
    -------
    ``(probabilities, counts)``: a ``(vocab_size, classes)`` array (NaN rows for tokens that do not occur) and the
    number of cells each token occurs in.
    """
    import torch

    from .._engine import gene_token_mask, resolve_device, run_batches

    if model.module.gene_classifier is None:
        msg = "The model has no gene-classification head; fine-tune it with `model.train_gene_classifier()` first."
        raise ValueError(msg)
    device = resolve_device(device)
    module = model.module
    vocab_size, n_classes = module.config.vocab_size, len(model.gene_classes)
    dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    sums = torch.zeros(vocab_size, n_classes, dtype=dtype, device=device)
    counts = torch.zeros(vocab_size, dtype=dtype, device=device)

    def step(batch, ids, mask):
        logits = module.classify_genes(ids, mask)
        genes = gene_token_mask(ids, mask, has_special_tokens=module.special_tokens)
        tokens = ids[genes]
        sums.index_add_(0, tokens, torch.softmax(logits[genes].float(), -1).to(dtype))
        counts.index_add_(0, tokens, torch.ones(len(tokens), dtype=dtype, device=device))

    run_batches(
        model,
        info,
        cells,
        step,
        token_budget=token_budget,
        device=device,
        precision=precision,
        progress_bar=progress_bar,
        description="classifying genes",
    )
    counts_np = counts.cpu().numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        probabilities = sums.cpu().numpy() / counts_np[:, None]
    return probabilities.astype(np.float32), counts_np.astype(np.int64)


def classify_genes(
    data: AnnData | MuData,
    model: GeneformerModel,
    *,
    key_added: str = "geneformer_gene_class",
    encoding_key: str = "geneformer",
    token_budget: int | None = None,
    device: str | None = None,
    precision: str = "auto",
    progress_bar: bool = True,
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
        ``.var[f"{key_added}_{class}"]``: each class's probability (NaN for genes in no encoded cell);
        ``.var[key_added]``: the most probable class (categorical, NaN for genes in no encoded cell);
        ``.var[f"{key_added}_n_cells"]``: the number of cells averaged over; ``.uns[key_added]``: parameters and
        classes.
    encoding_key, token_budget, device, precision, progress_bar, mod
        As in :func:`scgeneformer.tl.embed`.
    copy
        Return a copy with the results instead of writing into ``data``.
    """
    import pandas as pd

    from ..pp._input_ids import EncodingInfo

    if copy:
        data = data.copy()
    adata = resolve_adata(data, mod)
    info = EncodingInfo(adata, encoding_key)
    per_token, counts = token_class_probabilities(
        model,
        info,
        np.flatnonzero(info.lengths > 0),
        token_budget=token_budget,
        device=device,
        precision=precision,
        progress_bar=progress_bar,
    )
    classes = list(model.gene_classes)
    token = info.var_token
    probabilities = np.full((adata.n_vars, len(classes)), np.nan, dtype=np.float32)
    n_cells = np.zeros(adata.n_vars, dtype=np.int64)
    in_vocabulary = token >= 0
    probabilities[in_vocabulary] = per_token[token[in_vocabulary]]
    n_cells[in_vocabulary] = counts[token[in_vocabulary]]
    seen = n_cells > 0
    for i, name in enumerate(classes):
        adata.var[f"{key_added}_{name}"] = probabilities[:, i]
    codes = np.full(adata.n_vars, -1)
    codes[seen] = probabilities[seen].argmax(1)
    adata.var[key_added] = pd.Categorical.from_codes(codes, categories=classes)
    adata.var[f"{key_added}_n_cells"] = n_cells
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
    token_budget: int | None = None,
    device: str | None = None,
    precision: str = "auto",
    mod: str = "rna",
    **train_kwargs,
) -> pd.DataFrame:
    """Cross-validate gene classification: k folds over the labelled genes, a fine-tuned copy of the model per fold.

    The labelled genes that occur in encoded cells are split into ``n_folds`` folds stratified by class
    (:class:`sklearn.model_selection.StratifiedKFold` with shuffling). For each fold, a copy of ``model`` (e.g. a
    pretrained one; ``model`` itself is left unchanged) is fine-tuned as by
    :meth:`~scgeneformer.GeneformerModel.train_gene_classifier` with the other folds' genes labelled, then predicts
    the fold's genes: a gene's class probabilities are the mean over its occurrences in the encoded cells.

    Parameters
    ----------
    data
        Encoded AnnData (or MuData); it need not be registered with the model.
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
        The table is also stored in ``.uns[key_added]``.
    encoding_key, token_budget, device, precision, mod
        As in :func:`scgeneformer.tl.embed` (``token_budget``, ``device`` and ``precision`` for the predictions).
    **train_kwargs
        Arguments of :meth:`~scgeneformer.GeneformerModel.train_gene_classifier`, e.g. ``max_epochs``, ``lr``,
        ``freeze_layers``, ``accelerator`` or ``enable_progress_bar``.

    Returns
    -------
    One row per fold: ``fold``, ``n_train_genes``, ``n_test_genes``, ``roc_auc`` (of the second class's probability
    for two classes, one-vs-rest macro average for more), ``macro_f1`` and ``accuracy`` of the held-out genes.
    """
    import pandas as pd
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    from ..model._gene_classifier import cells_with_tokens, resolve_gene_labels
    from ..pp._input_ids import EncodingInfo

    adata = resolve_adata(data, mod)
    info = EncodingInfo(adata, encoding_key)
    model.check_encoding(info)
    labels = resolve_gene_labels(info, gene_labels)
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
    rows = []
    for fold, (train, test) in enumerate(folds.split(labels.tokens, labels.codes)):
        fold_model = model._detached_copy()
        fold_model._fit_gene_classifier(info, labels, train, seed=seed, **train_kwargs)
        test_tokens = labels.tokens[test]
        per_token, _ = token_class_probabilities(
            fold_model,
            info,
            cells_with_tokens(info, test_tokens),
            token_budget=token_budget,
            device=device,
            precision=precision,
            progress_bar=False,
        )
        probabilities = per_token[test_tokens].astype(np.float64)
        true, predicted = labels.codes[test], probabilities.argmax(1)
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
    adata.uns[key_added] = table
    return table
