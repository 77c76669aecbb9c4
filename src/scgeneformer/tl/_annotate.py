"""``sgf.tl.annotate``: cell labels predicted by a fine-tuned Geneformer classifier."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._data import resolve_adata

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

    from ..model import GeneformerModel
    from ..pp._input_ids import EncodingInfo


def class_probabilities(
    model: GeneformerModel,
    info: EncodingInfo,
    cells: np.ndarray,
    *,
    token_budget: int | None = None,
    device: str | None = None,
    precision: str = "auto",
    progress_bar: bool = True,
) -> np.ndarray:
    """Softmax class probabilities of ``cells`` (positions), NaN rows for cells that were not encoded."""
    import torch

    from .._engine import run_batches

    if model.module.classifier is None:
        msg = "The model has no classification head; fine-tune it with `model.train_classifier()` first."
        raise ValueError(msg)
    out = np.full((len(cells), len(model.classes)), np.nan, dtype=np.float32)
    row_of_cell = {int(c): i for i, c in enumerate(cells)}

    def step(batch, ids, mask):
        logits = model.module.classify(ids, mask)
        out[[row_of_cell[int(c)] for c in batch.cells]] = torch.softmax(logits.float(), -1).cpu().numpy()

    run_batches(
        model,
        info,
        cells,
        step,
        token_budget=token_budget,
        device=device,
        precision=precision,
        progress_bar=progress_bar,
        description="classifying cells",
    )
    return out


def annotate(
    data: AnnData | MuData,
    model: GeneformerModel,
    *,
    key_added: str = "geneformer_label",
    encoding_key: str = "geneformer",
    token_budget: int | None = None,
    device: str | None = None,
    precision: str = "auto",
    progress_bar: bool = True,
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
        ``.obs[key_added]``: predicted label (categorical; NaN for cells that were not encoded);
        ``.obs[f"{key_added}_probability"]``: its probability; ``.obsm[f"{key_added}_probabilities"]``: a DataFrame
        of every class's probability; ``.uns[key_added]``: parameters and classes.
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
    probabilities = class_probabilities(
        model,
        info,
        np.arange(adata.n_obs),
        token_budget=token_budget,
        device=device,
        precision=precision,
        progress_bar=progress_bar,
    )
    classes = list(model.classes)
    encoded = ~np.isnan(probabilities).any(1)
    codes = np.full(adata.n_obs, -1)
    codes[encoded] = probabilities[encoded].argmax(1)
    adata.obs[key_added] = pd.Categorical.from_codes(codes, categories=classes)
    best = np.full(adata.n_obs, np.nan, dtype=np.float32)
    best[encoded] = probabilities[encoded].max(1)
    adata.obs[f"{key_added}_probability"] = best
    adata.obsm[f"{key_added}_probabilities"] = pd.DataFrame(probabilities, index=adata.obs_names, columns=classes)
    adata.uns[key_added] = {
        "params": {"model": model.checkpoint or "", "encoding_key": encoding_key},
        "classes": classes,
    }
    return data if copy else None
