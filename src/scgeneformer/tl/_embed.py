"""``sgf.tl.embed`` and ``sgf.tl.state_embeddings``: zero-shot cell, gene and cell-state embeddings."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from .._data import resolve_adata
from .._settings import logger

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData
    from mudata import MuData

    from ..model import GeneformerModel
    from ..pp._input_ids import EncodingInfo

Pooling = Literal["mean", "cls"]


def hidden_state_index(layer: int, n_layers: int) -> int:
    """Index into the ``n_layers + 1`` hidden states (0 = embedding layer output) that ``layer`` selects.

    ``layer <= 0`` follows the reference's ``emb_layer``: ``0`` is the last encoder layer, ``-1`` the second to last,
    ``-k`` hidden state ``n_layers - k``. ``layer > 0`` is an explicit 1-based encoder layer number.
    """
    index = n_layers + layer if layer <= 0 else layer
    if not 0 <= index <= n_layers:
        msg = f"layer {layer} does not exist in a model with {n_layers} encoder layers (use -{n_layers}..{n_layers})."
        raise ValueError(msg)
    return index


@dataclass
class EmbeddingRequest:
    """What to compute for a set of cells (shared by embed, state embeddings and perturbation baselines)."""

    layer: int = -1
    pooling: Pooling = "mean"
    token_budget: int | None = None
    max_cells: int | None = None
    device: str | None = None
    precision: str = "auto"
    progress_bar: bool = True
    #: Lightning ``accelerator``/``devices``/``strategy``: set ``devices`` to spread batches over processes.
    accelerator: str = "auto"
    devices: int | list[int] | str | None = None
    strategy: str = "auto"


def compute_embeddings(
    model: GeneformerModel,
    info: EncodingInfo,
    cells: np.ndarray,
    request: EmbeddingRequest,
    *,
    gene_cells: np.ndarray | None = None,
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """Cell embeddings of ``cells`` (positions), in that order; optionally per-token gene-embedding sums.

    ``gene_cells`` is a boolean mask over all cells; for the cells in it, each gene token's contextual embedding
    is summed into a ``(vocabulary size, hidden)`` float64 array, returned with the per-token cell counts.
    """
    import torch

    from .._engine import gene_token_mask, run_batches

    model.check_encoding(info)
    module = model.module
    n_run = hidden_state_index(request.layer, module.n_layers)
    special = info.n_special > 0
    if request.pooling == "cls" and not special:
        msg = "pooling='cls' needs a V2 model (V1 cells have no <cls> token); use pooling='mean'."
        raise ValueError(msg)
    if request.pooling not in ("mean", "cls"):
        msg = f"pooling must be 'mean' or 'cls', got {request.pooling!r}."
        raise ValueError(msg)
    if request.devices is not None:
        from ..model._distributed import predict_embeddings

        precision = None if request.precision == "auto" else request.precision
        return predict_embeddings(
            module,
            info,
            cells,
            n_run=n_run,
            pooling=request.pooling,
            gene_cells=gene_cells,
            token_budget=request.token_budget,
            max_cells=request.max_cells,
            accelerator=request.accelerator,
            devices=request.devices,
            strategy=request.strategy,
            precision=precision,
            progress_bar=request.progress_bar,
        )
    hidden_size = module.config.hidden_size
    out = np.full((len(cells), hidden_size), np.nan, dtype=np.float32)
    row_of_cell = {int(c): i for i, c in enumerate(cells)}
    gene_sums = gene_counts = None
    if gene_cells is not None:
        gene_sums = torch.zeros((module.config.vocab_size, hidden_size), dtype=torch.float64)
        gene_counts = torch.zeros(module.config.vocab_size, dtype=torch.int64)

    def step(batch, ids, mask):
        hidden = module.encode(ids, mask, n_run).float()
        out[[row_of_cell[int(c)] for c in batch.cells]] = module.pool(hidden, ids, mask, request.pooling).cpu().numpy()
        if gene_sums is not None:
            genes = gene_token_mask(ids, mask, special)
            use = torch.as_tensor(gene_cells[batch.cells], device=ids.device)[:, None] & genes
            gene_sums.index_add_(0, ids[use].cpu(), hidden[use].double().cpu())
            gene_counts.index_add_(0, ids[use].cpu(), torch.ones(int(use.sum()), dtype=torch.int64))

    run_batches(
        model,
        info,
        cells,
        step,
        token_budget=request.token_budget,
        max_cells=request.max_cells,
        device=request.device,
        precision=request.precision,
        progress_bar=request.progress_bar,
        description="embedding cells",
    )
    genes_out = None if gene_sums is None else (gene_sums.numpy(), gene_counts.numpy())
    return out, genes_out


def embed(
    data: AnnData | MuData,
    model: GeneformerModel,
    *,
    layer: int = -1,
    pooling: Pooling = "mean",
    key_added: str = "X_geneformer",
    gene_embeddings: bool = False,
    gene_embedding_cells: np.ndarray | str | None = None,
    encoding_key: str = "geneformer",
    token_budget: int | None = None,
    max_cells: int | None = None,
    device: str | None = None,
    precision: str = "auto",
    progress_bar: bool = True,
    accelerator: str = "auto",
    devices: int | list[int] | str | None = None,
    strategy: str = "auto",
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
        Cell embeddings go to ``.obsm[key_added]`` (float32, NaN for cells that were not encoded), parameters to
        ``.uns[key_added]``.
    gene_embeddings
        Also compute each gene's contextual embedding averaged over the cells where it appears, into
        ``.varm[key_added]`` (NaN for genes that appear in no cell) and the number of those cells into
        ``.var[f"{key_added}_n_cells"]``. Genes mapping to the same token share it.
    gene_embedding_cells
        Restrict the gene embeddings to these cells: a boolean mask over cells or the name of a boolean ``.obs``
        column. Default: all cells.
    encoding_key
        The ``key_added`` of :func:`~scgeneformer.pp.rank_encode`.
    token_budget
        Padded tokens per batch (cells × longest cell); default 8,192 on CPU (small batches stay in cache),
        131,072 on CUDA. Results do not depend on it.
    max_cells
        Optional cap on cells per batch.
    device
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``; default: the best available.
    precision
        ``"auto"`` (bf16 autocast on CUDA where supported, fp16 otherwise; fp32 elsewhere), ``"fp32"``, ``"bf16"``
        or ``"fp16"``.
    progress_bar
        Show a progress bar.
    accelerator, devices, strategy
        Run through Lightning across several processes or devices, e.g. ``accelerator="gpu", devices=4,
        strategy="ddp"``; every process receives all embeddings. With ``devices=None`` (default) the embeddings are
        computed in this process on ``device``. Under Lightning, ``precision`` takes Lightning's values
        (``"bf16-mixed"``, ``"32-true"``; default bf16-mixed on GPUs).
    mod
        Modality used when ``data`` is a MuData.
    copy
        Return a copy with the results instead of writing into ``data``.
    """
    from ..pp._input_ids import EncodingInfo

    start = time.perf_counter()
    if copy:
        data = data.copy()
    adata = resolve_adata(data, mod)
    info = EncodingInfo(adata, encoding_key)
    model.check_encoding(info)
    gene_cells = None
    if gene_embeddings:
        gene_cells = _cell_mask(adata, gene_embedding_cells)
    request = EmbeddingRequest(
        layer, pooling, token_budget, max_cells, device, precision, progress_bar, accelerator, devices, strategy
    )
    cells = np.arange(adata.n_obs)
    embeddings, genes = compute_embeddings(model, info, cells, request, gene_cells=gene_cells)
    adata.obsm[key_added] = embeddings
    params = {
        "layer": layer,
        "hidden_state": hidden_state_index(layer, model.module.n_layers),
        "pooling": pooling,
        "model": model.checkpoint or "untrained",
        "vocabulary": model.vocabulary_version,
        "encoding_key": encoding_key,
    }
    adata.uns[key_added] = {"params": params}
    if genes is not None:
        sums, counts = genes
        token = info.var_token
        in_vocab = token >= 0
        n_cells = np.zeros(adata.n_vars, dtype=np.int64)
        n_cells[in_vocab] = counts[token[in_vocab]]
        varm = np.full((adata.n_vars, sums.shape[1]), np.nan, dtype=np.float32)
        seen = n_cells > 0
        varm[seen] = (sums[token[seen]] / n_cells[seen, None]).astype(np.float32)
        adata.varm[key_added] = varm
        adata.var[f"{key_added}_n_cells"] = n_cells
        params["gene_embedding_cells"] = int(gene_cells.sum())
    logger.info("embed: %d cells in %.1f s", adata.n_obs, time.perf_counter() - start)
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
    token_budget: int | None = None,
    device: str | None = None,
    precision: str = "auto",
    progress_bar: bool = True,
    mod: str = "rna",
) -> pd.DataFrame:
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
        Stored in ``.uns[key_added]`` (default ``f"{groupby}_geneformer_states"``) as ``{"params", "embeddings"}``.
    reference_quirks
        With ``summary="median"``, take the lower of the two middle values for an even number of cells, like
        ``torch.median`` in the reference, instead of their mean.
    encoding_key, token_budget, device, precision, progress_bar, mod
        As in :func:`embed`.

    Returns
    -------
    A DataFrame with one row per state and one column per embedding dimension.
    """
    import pandas as pd

    from ..pp._input_ids import EncodingInfo

    adata = resolve_adata(data, mod)
    info = EncodingInfo(adata, encoding_key)
    model.check_encoding(info)
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
    request = EmbeddingRequest(layer, pooling, token_budget, None, device, precision, progress_bar)
    embeddings, _ = compute_embeddings(model, info, cells, request)
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
    key = key_added or f"{groupby}_geneformer_states"
    adata.uns[key] = {
        "params": {"groupby": groupby, "summary": summary, "layer": layer, "pooling": pooling},
        "embeddings": table,
    }
    return table


def _cell_mask(adata: AnnData, cells) -> np.ndarray:
    if cells is None:
        return np.ones(adata.n_obs, dtype=bool)
    if isinstance(cells, str):
        if cells not in adata.obs.columns:
            msg = f"gene_embedding_cells {cells!r} is not an .obs column."
            raise KeyError(msg)
        return adata.obs[cells].to_numpy().astype(bool)
    mask = np.asarray(cells)
    if mask.dtype != bool or mask.shape != (adata.n_obs,):
        msg = "gene_embedding_cells must be a boolean mask over cells or an .obs column name."
        raise ValueError(msg)
    return mask
