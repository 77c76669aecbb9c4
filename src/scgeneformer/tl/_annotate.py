"""``sgf.tl.annotate``: cell labels predicted by a fine-tuned Geneformer classifier."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._data._anndata import copy_data, resolve_adata, show_in_mudata, writable_names

if TYPE_CHECKING:
    from collections.abc import Mapping

    from anndata import AnnData
    from mudata import MuData

    from .._compute._execution import Execution
    from ..model import GeneformerModel


def annotate(
    data: AnnData | MuData,
    model: GeneformerModel,
    *,
    key_added: str = "geneformer_label",
    min_probability: float | None = None,
    unknown_label: str = "unknown",
    encoding_key: str = "geneformer",
    execution: Execution | Mapping | None = None,
    mod: str = "rna",
    copy: bool = False,
) -> AnnData | MuData | None:
    """Predict cell labels with a model fine-tuned by :meth:`~scgeneformer.GeneformerModel.train_classifier`.

    The query data only need to be rank-encoded with the model's vocabulary: their genes may differ from those of
    the training data (genes outside the vocabulary are ignored, missing genes simply do not appear in the ranks).

    Parameters
    ----------
    data
        Encoded AnnData (or MuData).
    model
        A fine-tuned classifier.
    key_added
        Where the results go (see Returns).
    min_probability
        Label cells whose most probable class has a lower probability than this ``unknown_label`` instead (e.g.
        ``0.5``: cells the classifier is unsure about, such as cell types it was not trained on). ``None``
        (default): every encoded cell gets its most probable class.
    unknown_label
        The label of those uncertain cells; a category of ``.obs[key_added]`` (after the classes) when
        ``min_probability`` is given. Must not be one of the classes.
    encoding_key, execution, mod
        As in :func:`scgeneformer.tl.embed`.
    copy
        Return a copy with the results instead of writing into ``data``.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Written keys:

    ``.obs[key_added]``
        Predicted label (categorical; NaN for cells that were not encoded; ``unknown_label`` for cells below
        ``min_probability``).
    ``.obs[f"{key_added}_probability"]``
        The probability of the most probable class (also for cells labelled ``unknown_label``).
    ``.obsm[f"{key_added}_probabilities"]``
        A DataFrame of every class's probability (a ``/`` in a class name becomes ``_`` in its column name).
    ``.uns[key_added]``
        Parameters (with ``min_probability`` when given) and classes.

    With a multitask classifier, each task ``t`` gets these keys as ``f"{key_added}_{t}"`` (``obs``, its
    ``_probability`` and ``obsm`` ``_probabilities``), and ``uns[key_added]["classes"]`` maps tasks to classes.

    Examples
    --------
    >>> sgf.pp.rank_encode(query, vocabulary="V1")  # doctest: +SKIP
    >>> sgf.tl.annotate(query, model)  # doctest: +SKIP
    >>> query.obs["geneformer_label"].value_counts()  # doctest: +SKIP
    >>> sgf.tl.annotate(query, model, min_probability=0.7)  # unsure cells: "unknown"  # doctest: +SKIP
    """
    import pandas as pd

    if min_probability is not None and not 0 <= min_probability <= 1:
        msg = f"min_probability must be between 0 and 1, got {min_probability}."
        raise ValueError(msg)
    if copy:
        data = copy_data(data)
    adata = resolve_adata(data, mod)
    predicted = model.predict(data, soft=True, encoding_key=encoding_key, mod=mod, execution=execution)
    multitask = isinstance(predicted, dict)
    tasks = predicted if multitask else {None: predicted}
    keys = dict(zip(tasks, writable_names(list(tasks)), strict=True)) if multitask else {None: None}
    if min_probability is not None and any(unknown_label in p.columns for p in tasks.values()):
        msg = f"unknown_label {unknown_label!r} is one of the classes; choose another name."
        raise ValueError(msg)
    for task, probabilities in tasks.items():
        key = key_added if task is None else f"{key_added}_{keys[task]}"
        values = probabilities.to_numpy()
        classes = list(probabilities.columns)
        encoded = ~np.isnan(values).any(1)
        codes = np.full(adata.n_obs, -1)
        codes[encoded] = values[encoded].argmax(1)
        best = np.full(adata.n_obs, np.nan, dtype=np.float32)
        best[encoded] = values[encoded].max(1)
        categories = classes
        if min_probability is not None:
            categories = [*classes, unknown_label]
            codes[encoded & (best < min_probability)] = len(classes)
        adata.obs[key] = pd.Categorical.from_codes(codes, categories=categories)
        adata.obs[f"{key}_probability"] = best
        # class names with "/" cannot be column names in h5ad/zarr files; uns[key_added]["classes"] keeps them
        adata.obsm[f"{key}_probabilities"] = probabilities.set_axis(writable_names(classes), axis=1)
        show_in_mudata(data, mod, obs=[key, f"{key}_probability"])
    classes = {keys[t]: list(p.columns) for t, p in tasks.items()} if multitask else list(predicted.columns)
    params = {"model": model.checkpoint or "", "encoding_key": encoding_key}
    if min_probability is not None:
        params |= {"min_probability": float(min_probability), "unknown_label": unknown_label}
    adata.uns[key_added] = {
        "params": params,
        "classes": classes,
    }
    return data if copy else None
