"""``sgf.tl.embed`` and ``sgf.tl.state_embeddings``: zero-shot cell, gene and cell-state embeddings."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Literal

import numpy as np

from .._data._anndata import cell_mask, copy_data, resolve_adata, show_in_mudata, writable_names
from .._settings import logger
from .._utils._text import counted

if TYPE_CHECKING:
    from collections.abc import Mapping

    import pandas as pd
    from anndata import AnnData
    from mudata import MuData

    from .._compute._execution import Execution
    from ..model import GeneformerModel

Pooling = Literal["mean", "cls"]


def embed(
    data: AnnData | MuData,
    model: GeneformerModel,
    *,
    layer: int = -1,
    pooling: Pooling = "mean",
    key_added: str = "geneformer",
    gene_embeddings: bool = False,
    gene_embedding_cells: np.ndarray | str | None = None,
    encoding_key: str = "geneformer",
    execution: Execution | Mapping | None = None,
    mod: str = "rna",
    copy: bool = False,
) -> AnnData | MuData | None:
    """Zero-shot Geneformer embeddings of cells (and optionally genes).

    Parameters
    ----------
    data
        AnnData (or MuData) encoded by :func:`scgeneformer.pp.rank_encode` with the model's vocabulary.
    model
        A :class:`~scgeneformer.GeneformerModel`, e.g. ``GeneformerModel.from_pretrained("Geneformer-V1-10M")``.
    layer
        Which hidden state to use. Values ``<= 0`` follow the reference's ``emb_layer``; positive values name an
        encoder layer explicitly. For a model with ``N`` encoder layers:

        ============  =================================================================
        ``layer``      hidden state
        ============  =================================================================
        ``0``          output of the last encoder layer (``hidden_states[N]``)
        ``-1``         output of the second-to-last layer (``hidden_states[N-1]``), the
                       reference default for embeddings and perturbation
        ``-k``         ``hidden_states[N-k]``; ``-N`` is the embedding layer output
        ``k > 0``      output of encoder layer ``k`` (``hidden_states[k]``, 1-based)
        ============  =================================================================

        Layers above the requested one and the masked-gene head are not computed.
    pooling
        ``"mean"``: average over gene tokens (``<cls>``, ``<eos>`` and padding excluded). ``"cls"``: the ``<cls>``
        token's state (V2 models only).
    key_added
        Name of the results, as scanpy names its own (``sc.tl.pca`` writes ``obsm["X_pca"]`` and ``uns["pca"]``):
        see Returns.
    gene_embeddings
        Also compute each gene's contextual embedding averaged over the cells where it appears. Genes mapping to
        the same token share it.
    gene_embedding_cells
        Restrict the gene embeddings to these cells: a boolean mask over cells, the name of a boolean ``.obs``
        column, a list of obs names or ``{obs column: values}``. Default: all cells.
    encoding_key
        The ``key_added`` of :func:`~scgeneformer.pp.rank_encode`.
    execution
        How to run: devices, processes, precision, batch size, progress bar (:class:`~scgeneformer.Execution` or a
        dict of its fields). Results do not depend on the batch size.
    mod
        Modality used when ``data`` is a MuData.
    copy
        Return a copy with the results instead of writing into ``data``.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Written keys:

    ``.obsm[f"X_{key_added}"]``
        Cell embeddings, float32 (NaN rows for cells that were not encoded): ``obsm["X_geneformer"]`` by default.
    ``.uns[f"{key_added}_embed"]``
        ``{"params": {...}}``: layer, hidden state, pooling, model, vocabulary, encoding key.
    ``.varm[f"{key_added}_genes"]``, ``.var[f"{key_added}_genes_n_cells"]``
        With ``gene_embeddings``: each gene's mean contextual embedding (NaN for genes in no cell) and the number
        of cells it was averaged over.

    Examples
    --------
    >>> sgf.pp.rank_encode(adata, vocabulary="V1")  # doctest: +SKIP
    >>> sgf.tl.embed(adata, model)  # doctest: +SKIP
    >>> sc.pp.neighbors(adata, use_rep="X_geneformer")  # doctest: +SKIP
    """
    start = time.perf_counter()
    if copy:
        data = copy_data(data)
    adata = resolve_adata(data, mod)
    info = model.encoding_info(data, encoding_key=encoding_key, mod=mod)
    gene_cells = None
    if gene_embeddings:
        gene_cells = (
            np.ones(adata.n_obs, dtype=bool)
            if gene_embedding_cells is None
            else cell_mask(adata, gene_embedding_cells, argument="gene_embedding_cells")
        )
    out = model.get_embeddings(
        data,
        layer=layer,
        pooling=pooling,
        gene_embeddings=gene_embeddings,
        gene_embedding_cells=gene_cells,
        encoding_key=info.key,
        mod=mod,
        execution=execution,
    )
    adata.obsm[f"X_{key_added}"] = out.cells
    params = {
        "layer": layer,
        "hidden_state": out.hidden_state,
        "pooling": pooling,
        "model": model.checkpoint or "untrained",
        "vocabulary": model.vocabulary_version,
        "encoding_key": encoding_key,
    }
    adata.uns[f"{key_added}_embed"] = {"params": params}
    if gene_embeddings:
        adata.varm[f"{key_added}_genes"] = out.genes
        adata.var[f"{key_added}_genes_n_cells"] = out.gene_n_cells
        params["gene_embedding_cells"] = int(gene_cells.sum())
        show_in_mudata(data, mod, var=[f"{key_added}_genes_n_cells"])
    logger.info("embed: %s in %.1f s", counted(adata.n_obs, "cell"), time.perf_counter() - start)
    return data if copy else None


def state_embeddings(
    data: AnnData | MuData,
    model: GeneformerModel,
    groupby: str,
    *,
    groups: list | None = None,
    summary: Literal["mean", "median"] = "mean",
    layer: int = -1,
    pooling: Pooling = "mean",
    key_added: str | None = None,
    encoding_key: str = "geneformer",
    reference_quirks: bool = False,
    execution: Execution | Mapping | None = None,
    mod: str = "rna",
    inplace: bool = True,
) -> pd.DataFrame | None:
    """Exact mean (or median) embedding of each group of cells: the cell states of goal-state perturbation.

    Parameters
    ----------
    data
        Encoded AnnData (or MuData).
    model
        The model.
    groupby
        ``.obs`` column defining the states.
    groups
        States to compute (default: every value of ``groupby``). A state without encoded cells is an error.
    summary
        ``"mean"`` or ``"median"`` over the cells of a state, per dimension.
    layer, pooling
        As in :func:`embed`.
    key_added
        Key in ``.uns``; default ``f"{groupby}_geneformer_states"``.
    reference_quirks
        With ``summary="median"``, take the lower of the two middle values for an even number of cells, like
        ``torch.median`` in the reference, instead of their mean.
    encoding_key, execution, mod
        As in :func:`embed`.
    inplace
        Store the table in ``.uns[key_added]`` as ``{"params", "embeddings"}`` and return ``None``; with
        ``inplace=False`` return it and leave ``data`` unchanged.

    Returns
    -------
    With ``inplace=False``: a DataFrame with one row per state and one column per embedding dimension. Otherwise
    ``None``, and the same table is in ``.uns[key_added]["embeddings"]`` (its parameters in ``["params"]``).

    Examples
    --------
    >>> states = sgf.tl.state_embeddings(adata, model, "condition", inplace=False)  # doctest: +SKIP
    """
    import pandas as pd

    adata = resolve_adata(data, mod)
    info = model.encoding_info(data, encoding_key=encoding_key, mod=mod)
    if groupby not in adata.obs.columns:
        msg = f"groupby {groupby!r} is not an .obs column; available: {list(adata.obs.columns)}."
        raise KeyError(msg)
    if summary not in ("mean", "median"):
        msg = f"summary must be 'mean' or 'median', got {summary!r}."
        raise ValueError(msg)
    labels = adata.obs[groupby].astype(object).to_numpy()
    groups = list(pd.unique(labels)) if groups is None else list(groups)
    encoded = info.lengths > 0
    for group in groups:
        if not (encoded & (labels == group)).any():
            msg = f"State {group!r} of {groupby!r} has no encoded cells."
            raise ValueError(msg)
    cells = np.flatnonzero(encoded & np.isin(labels, groups))
    embeddings = model.get_latent_representation(
        data, cells, layer=layer, pooling=pooling, encoding_key=info.key, mod=mod, execution=execution
    )
    rows = {}
    for group in groups:
        member = embeddings[labels[cells] == group].astype(np.float64)
        if summary == "mean":
            rows[group] = member.mean(0)
        elif reference_quirks:
            rows[group] = np.sort(member, axis=0)[(len(member) - 1) // 2]
        else:
            rows[group] = np.median(member, axis=0)
    table = pd.DataFrame.from_dict(rows, orient="index").astype(np.float32)
    table.index = table.index.astype(str)
    table.columns = table.columns.astype(str)
    if not inplace:
        return table
    adata.uns[key_added or writable_names([f"{groupby}_geneformer_states"])[0]] = {
        "params": {"groupby": groupby, "summary": summary, "layer": layer, "pooling": pooling},
        "embeddings": table,
    }
    return None
