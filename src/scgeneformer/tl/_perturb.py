"""``sgf.tl.perturb``: in silico perturbation (deletion, overexpression, inhibition, activation) of genes in cells."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np

from .._compute._execution import Execution
from .._data._anndata import cell_mask, resolve_adata
from .._settings import logger
from .._utils._progress import progress_bar
from . import _perturb_ops as ops
from ._perturb_spec import GoalStates, Perturbation, PerturbationSpec

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData
    from mudata import MuData

    from .._data._encoding import EncodingInfo
    from ..model import GeneformerModel
    from ..vocabulary import Vocabulary

SEQUENCE_BLOCK = 512  # cells whose token sequences are read from the rank layer at once


def perturb(
    data: AnnData | MuData,
    model: GeneformerModel,
    genes: str | Sequence[str] = "all",
    *,
    perturbation: Perturbation = "delete",
    anchor_gene: str | None = None,
    rank_shift: int | float = 0.25,
    pooling: Literal["mean", "cls"] | None = None,
    cell_cosine: Literal["pooled", "gene_mean"] = "pooled",
    gene_shifts: bool = False,
    states: GoalStates | Mapping | None = None,
    state_embeddings: pd.DataFrame | Mapping | None = None,
    cells: np.ndarray | str | Sequence[str] | Mapping | None = None,
    max_cells: int | None = None,
    random_state: int = 42,
    layer: int = -1,
    vocabulary: Vocabulary | str | None = None,
    key_added: str = "geneformer_perturb",
    encoding_key: str = "geneformer",
    reference_quirks: bool = False,
    execution: Execution | Mapping | None = None,
    out: str | os.PathLike | None = None,
    mod: str = "rna",
    inplace: bool = True,
) -> dict[str, pd.DataFrame] | None:
    """In silico perturbation of genes: how far each cell (and each of its other genes) moves.

    Every selected cell runs once unperturbed and once per perturbation; perturbed sequences of many cells are
    batched together by length (see :func:`scgeneformer.tl.embed` for the engine). Every argument is checked before
    any forward pass.

    Parameters
    ----------
    data
        AnnData (or MuData) encoded by :func:`scgeneformer.pp.rank_encode` with the model's vocabulary.
    model
        A pretrained or fine-tuned :class:`~scgeneformer.GeneformerModel` (for in silico treatment: a model
        fine-tuned to classify the states).
    genes
        ``"all"``: perturb every gene of each cell, one at a time. A gene or list of genes (``var_names``, Ensembl
        IDs or symbols): perturbed **together**, as one set, in every selected cell.
    perturbation
        - ``"delete"``: remove the gene(s) from the ranking.
        - ``"overexpress"``: move the gene(s) to the top ranks (after ``<cls>`` in V2), keeping their order. With a
          gene list, genes absent from a cell are inserted and the cell is truncated to the model's input size;
          the original is then truncated by the same number of genes, so the comparison models the gain of the
          genes, not the loss of the tail. With ``"all"``, the top-ranked gene is skipped (it is already there).
        - ``"inhibit"`` / ``"activate"``: move the gene(s) down / up by ``rank_shift`` ranks (the reference lists
          these but never implemented them). The move is clipped to the cell's last / first gene rank; the other
          genes keep their order. With several genes, each moves in turn, in rank order.
    anchor_gene
        With ``genes="all"``: perturb this gene together with each other gene of the cell (pairs; the reference's
        ``combos=1``). Only cells expressing it are used.
    rank_shift
        Ranks moved by inhibit/activate: an integer, or a fraction of the cell's number of genes (default a
        quartile, at least one rank).
    pooling
        Cell embedding compared: ``"cls"`` (the ``<cls>`` state; default for V2 models) or ``"mean"`` over gene
        tokens (default for V1).
    cell_cosine
        With mean pooling, the per-cell ``cosine``: ``"pooled"`` is the cosine between the perturbed and original
        mean-pooled cell embeddings; ``"gene_mean"`` the mean over the cell's remaining genes of each gene's
        cosine between perturbed and original context, which is what the reference reports for V1 models as
        ``cell_emb``. With ``<cls>`` pooling it is always the cosine of the ``<cls>`` states.
    gene_shifts
        Also report, for every perturbation, each remaining gene's cosine between its perturbed and original
        embeddings (rows with ``affected`` = the gene). Tables get large: about (genes per cell)² rows per cell
        with ``genes="all"``.
    states
        Goal-state mode (in silico treatment): a :class:`~scgeneformer.tl.GoalStates` or a dict like the reference's
        ``cell_states_to_model``, ``{"state_key": ..., "start_state": ..., "goal_state": ..., "alt_states": [...]}``.
        Only cells with ``obs[state_key] == start_state`` are perturbed, and for every state (start, goal,
        alternatives) the shift ``cos(perturbed, state) - cos(original, state)`` is reported (positive: toward
        the state).
    state_embeddings
        Embedding of each state (a DataFrame indexed by state, as returned by
        :func:`scgeneformer.tl.state_embeddings` with ``inplace=False``, or a mapping state → vector). Default: the
        exact mean embedding of all encoded cells of each state, computed here with the same ``layer`` and
        ``pooling``.
    cells
        Which cells to perturb: a boolean mask, the name of a boolean ``.obs`` column, a list of obs names, or a
        mapping ``{obs column: allowed values}`` (the reference's ``filter_data``).
    max_cells
        Perturb at most this many of the eligible cells, drawn like the reference (the first ``max_cells`` of
        ``numpy.random.default_rng(random_state).permutation``). Cells then run longest first.
    random_state
        Seed of that draw.
    layer
        Hidden state compared, as in :func:`~scgeneformer.tl.embed` (default ``-1``, the second-to-last layer, as
        the reference; use ``0`` with a fine-tuned classifier).
    vocabulary
        Dictionaries to name genes (a :class:`~scgeneformer.Vocabulary`, ``"V1"``/``"V2"`` or a folder); default:
        the folder the data were encoded from, if it still exists, else the model's published vocabulary.
    key_added
        Key of the results in ``.uns``.
    encoding_key
        The ``key_added`` of :func:`~scgeneformer.pp.rank_encode`.
    reference_quirks
        Reproduce two bugs of the reference, for comparisons with it: with ``genes="all"`` and
        ``perturbation="overexpress"``, the gene-shift labels shift by one gene (each value is reported under the
        next gene, and the last gene's value is dropped); and with a gene list, the overflow of the insertion is
        over-counted by the number of inserted genes, so a cell one gene short of the input size loses a gene of
        its original that the perturbed cell keeps (that gene is compared with a zero vector, cosine 0).
    execution
        How to run (:class:`~scgeneformer.Execution`): device, precision, batch size, progress bar. With several
        devices or processes (e.g. ``{"accelerator": "cuda", "devices": 8, "strategy": "ddp"}``, or ``num_nodes``),
        the cells are split into parts that are shared out by their cost in tokens, each process perturbs its
        parts, and every process receives all results, identical to a run in one process.
    out
        Folder of a Parquet store to write the results to as parts of cells finish, instead of keeping them in
        memory: memory then stays flat in the number of cells and result rows. Running the same call again
        resumes: finished parts are kept and only the rest is computed (a call with other parameters, another
        model or other cells is refused). ``.uns[key_added]`` then holds the summary, the parameters and the path;
        :func:`~scgeneformer.tl.perturbation_stats` and the ``sgf.pl`` plots read the store part by part.
    mod
        Modality used when ``data`` is a MuData.
    inplace
        Store the results in ``.uns[key_added]`` and return ``None``; with ``inplace=False`` return them and leave
        ``data`` unchanged (e.g. for read-only backed data).

    Returns
    -------
    With ``inplace=False``, ``{"cells": DataFrame, "genes": DataFrame, "params": dict}``; else the same is stored in
    ``.uns[key_added]``.

    ``cells``: one row per (cell, perturbation) with ``affected == "cell"`` and, with ``gene_shifts``, one row per
    (cell, perturbation, remaining gene). Columns: ``cell`` (obs name), ``perturbed`` (symbols, ``+``-joined for a
    set), ``perturbed_id`` (Ensembl IDs), ``perturbed_token`` (token ids, ``,``-joined), ``affected``,
    ``affected_id``, ``affected_token`` (``-1`` for the cell), ``cosine`` and, in goal-state mode, ``shift_<state>``
    for each state.

    ``genes``: one row per perturbation (gene or set) over its cells: ``perturbed``, ``perturbed_id``,
    ``perturbed_token``, ``n_cells``, ``cosine_mean`` and ``shift_<state>_mean``; sorted by the shift toward the
    goal state (largest first), or by ``cosine_mean`` (strongest effect first).

    ``params``: the run's parameters (genes, perturbation, pooling, layer, cells, model, states …).

    With ``out``: ``{"path": the store, "genes": the summary, "params": ..., "n_rows": rows in the store}``; read
    the table with ``sgf.tl.read_perturbation_store(path)``.

    Examples
    --------
    >>> sgf.tl.perturb(adata, model, "all", max_cells=100)  # delete every gene of 100 cells  # doctest: +SKIP
    >>> adata.uns["geneformer_perturb"]["genes"].head()  # doctest: +SKIP
    >>> treatment = {"state_key": "condition", "start_state": "stim", "goal_state": "ctrl"}
    >>> sgf.tl.perturb(adata, model, "all", states=treatment)  # doctest: +SKIP
    """
    import torch

    from .._compute._engine import inference
    from ._perturb_engine import EngineSpec

    start_time = time.perf_counter()
    adata = resolve_adata(data, mod)
    info = model.encoding_info(data, encoding_key=encoding_key, mod=mod)
    special = info.has_special_tokens
    if cell_cosine not in ("pooled", "gene_mean"):
        msg = f"cell_cosine must be 'pooled' or 'gene_mean', got {cell_cosine!r}."
        raise ValueError(msg)
    pooling = pooling or ("cls" if special else "mean")
    if pooling not in ("mean", "cls") or (pooling == "cls" and not special):
        msg = f"pooling must be 'mean' or (V2 models only) 'cls', got {pooling!r}."
        raise ValueError(msg)
    n_run = model.hidden_state_index(layer)
    if max_cells is not None and (
        isinstance(max_cells, bool) or not isinstance(max_cells, int | np.integer) or max_cells < 1
    ):
        msg = f"max_cells must be a positive integer or None (all eligible cells), got {max_cells!r}."
        raise ValueError(msg)
    if not adata.obs_names.is_unique:
        duplicated = adata.obs_names[adata.obs_names.duplicated()].unique()[:5].tolist()
        msg = (
            f"The results name cells by obs name, but obs names repeat (e.g. {duplicated}); call "
            "`adata.obs_names_make_unique()` first."
        )
        raise ValueError(msg)
    PerturbationSpec(perturbation, rank_shift=rank_shift)  # validates both before anything is loaded
    goal = GoalStates.coerce(states)
    if goal is not None:
        _check_states(adata, info, goal)
    vocab = _resolve_vocabulary(vocabulary, model, info)  # may download the published dictionaries: after cheap checks
    tokens = _resolve_genes(genes, adata, info, vocab)
    anchor = None if anchor_gene is None else _resolve_genes([anchor_gene], adata, info, vocab)[0]
    spec = PerturbationSpec(perturbation, tokens, anchor, rank_shift, reference_quirks)
    execution = Execution.coerce(execution)

    selected = _select_cells(adata, info, cells, goal, spec, max_cells, random_state, vocab)
    state_matrix = None
    if goal is not None:
        state_matrix = _state_matrix(adata, model, goal, state_embeddings, layer, pooling, encoding_key, execution)

    max_len = model.module.config.max_position_embeddings
    n_perturbations = spec.count(info.lengths[selected], special)
    device_type = execution.resolved_accelerator if execution.distributed else execution.device.type
    engine = EngineSpec(
        n_run=n_run,
        pooling=pooling,
        cell_cosine=cell_cosine,
        states=None if state_matrix is None else torch.as_tensor(state_matrix),
        gene_shifts=gene_shifts,
        token_budget=execution.token_budget_for(device_type),
    )
    plan = _plan_parts(info, selected, spec, max_len, model.module.config)
    work = _PerturbationWork(info, selected, spec, max_len, engine)
    quirk_labels = reference_quirks and tokens is None and perturbation == "overexpress"
    state_columns = [] if goal is None else goal.columns
    params = spec.to_params() | {
        "pooling": pooling,
        "cell_cosine": cell_cosine if pooling == "mean" else "cls",
        "layer": layer,
        "hidden_state": n_run,
        "n_cells": len(selected),
        "n_perturbations": n_perturbations,
        "model": model.checkpoint or "untrained",
        "vocabulary": model.vocabulary_version,
    }
    if goal is not None:
        params["states"] = goal.to_params()

    store = None
    if out is not None:
        from ._perturb_store import PerturbationStore, cells_fingerprint, model_fingerprint

        identity = params | {
            "cells": cells_fingerprint(adata.obs_names[selected]),
            "model_weights": model_fingerprint(model.module),
            "state_embeddings": None if state_matrix is None else state_matrix.round(6).tolist(),
            "gene_shifts": gene_shifts,
            "precision": execution.resolved_precision,
            "parts": [int(len(part)) for part in plan.parts],
        }
        store = PerturbationStore.open(out, identity, len(plan.parts))
    done = set() if store is None else store.done_parts()
    todo = [p for p in range(len(plan.parts)) if p not in done]
    if done:
        logger.info("perturb: resuming %s: %d of %d parts done", out, len(done), len(plan.parts))

    def finish_part(part: int, result, labels: dict) -> None:
        if store is not None:
            table = _tables(adata, selected, labels, [result], vocab, state_columns, shift_labels=quirk_labels)
            store.write_part(part, table["cells"])

    if execution.distributed:
        results, labels = _run_distributed(model.module, work, plan, todo, execution, finish_part, keep=store is None)
    else:
        results, labels = [], {}
        done_perturbations = int(sum(plan.n_perturbations[p] for p in done))
        with (
            progress_bar(
                total=n_perturbations,
                initial=done_perturbations,
                desc="perturbations",
                unit="seq",
                disable=not execution.show_progress,
            ) as bar,
            inference(model.module, execution.device, execution) as module,
        ):
            for part in todo:
                result, part_labels = work.run(module, plan.parts[part], progress=bar)
                finish_part(part, result, part_labels)
                if store is None:
                    results.append(result)
                    labels |= part_labels

    elapsed = time.perf_counter() - start_time
    params["seconds"] = round(elapsed, 3)
    if store is None:
        tables = _tables(adata, selected, labels, results, vocab, state_columns, shift_labels=quirk_labels)
        tables["params"] = params
    else:
        from ._perturb_store import summarize_store

        summary = summarize_store(store, state_columns)
        store.write_summary(summary)
        tables = {"path": str(store.path), "genes": summary, "params": params, "n_rows": store.n_rows}
    logger.info("perturb: %d perturbations of %d cells in %.1f s", n_perturbations, len(selected), elapsed)
    if not inplace:
        return tables
    adata.uns[key_added] = tables
    return None


# -- parts and their execution ------------------------------------------------------------------------------------
class _Plan(NamedTuple):
    """Groups of cells (positions in ``selected``, contiguous) that run and are stored together."""

    parts: list[np.ndarray]
    #: model FLOPs of each part's perturbed sequences (how parts are shared out between processes)
    cost: np.ndarray
    n_perturbations: np.ndarray


def _plan_parts(info, selected: np.ndarray, spec: PerturbationSpec, max_len: int, config) -> _Plan:
    """Cut the selected cells into parts of about ``CHUNK_TOKENS`` perturbed tokens, in processing order.

    These are the chunks the engine runs (so a part's results do not depend on how many processes run), costed by
    the encoder's FLOPs on each perturbed sequence, whose attention grows with the square of its length.
    """
    from . import _perturb_engine

    d, f = config.hidden_size, config.intermediate_size
    if spec.all_genes:  # from the lengths alone: building every perturbed sequence here would double the work
        counts, length = spec.perturbed_lengths(info.lengths[selected], info.has_special_tokens)
        length = length.astype(np.float64)
        tokens = counts * length
        cost = counts * length * (8 * d + 4 * f + 4 * length) * d
    else:  # one perturbed sequence per cell, whose length depends on which of the genes the cell holds
        tokens = np.zeros(len(selected), dtype=np.int64)
        cost = np.zeros(len(selected), dtype=np.float64)
        counts = np.zeros(len(selected), dtype=np.int64)
        for j, job in enumerate(_iter_jobs(info, selected, spec, max_len)):
            lengths = np.array([len(p) for p in job.perturbed], dtype=np.float64)
            tokens[j], counts[j] = lengths.sum(), len(lengths)
            cost[j] = (lengths * (8 * d + 4 * f + 4 * lengths)).sum() * d
    parts, start, running = [], 0, 0
    for j in range(len(selected)):
        running += tokens[j]
        if running >= _perturb_engine.CHUNK_TOKENS:
            parts.append(np.arange(start, j + 1))
            start, running = j + 1, 0
    if start < len(selected):
        parts.append(np.arange(start, len(selected)))
    return _Plan(
        parts,
        np.array([cost[p].sum() for p in parts]),
        np.array([counts[p].sum() for p in parts], dtype=np.int64),
    )


class _PerturbationWork:
    """Runs one part: builds its cells' perturbations and passes them through the engine."""

    def __init__(self, info, selected: np.ndarray, spec: PerturbationSpec, max_len: int, engine) -> None:
        self.info, self.selected, self.spec, self.max_len, self.engine = info, selected, spec, max_len, engine

    def run(self, module, part: np.ndarray, progress=None) -> tuple[object, dict]:
        from ._perturb_engine import run_chunk

        cells = _iter_jobs(self.info, self.selected[part], self.spec, self.max_len)
        jobs = list(zip(part.tolist(), cells, strict=True))
        labels = {j: job.labels for j, job in jobs}
        return run_chunk(module, jobs, self.engine, progress), labels


def share_by_cost(cost: np.ndarray, n_workers: int) -> list[list[int]]:
    """Longest-processing-time-first assignment of items with ``cost`` to ``n_workers`` (each list in item order)."""
    loads = np.zeros(n_workers)
    assigned: list[list[int]] = [[] for _ in range(n_workers)]
    for item in np.argsort(-np.asarray(cost), kind="stable"):
        worker = int(np.argmin(loads))
        assigned[worker].append(int(item))
        loads[worker] += cost[item]
    return [sorted(items) for items in assigned]


def _run_distributed(module, work: _PerturbationWork, plan: _Plan, todo: list[int], execution, finish_part, *, keep):
    """Run the parts ``todo`` over the processes of a Lightning run; every process receives all results."""
    import lightning.pytorch as pl
    import torch

    from .._compute._batching import world
    from .._compute._lightning import lightning_predict

    collected: dict[str, list] = {"results": [], "labels": []}

    class Parts(torch.utils.data.Sampler):
        """The parts of the process iterating, shared out by cost once the processes exist."""

        def _mine(self) -> list[list[int]]:
            size, rank = world()
            shares = share_by_cost(plan.cost[todo], size)
            return [[todo[i]] for i in shares[rank]]

        def __iter__(self):
            return iter(self._mine())

        def __len__(self) -> int:
            return len(self._mine())

    class Perturber(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.module = module

        def predict_step(self, batch, batch_idx):
            part = int(batch[0])
            result, labels = work.run(self.module, plan.parts[part])
            finish_part(part, result, labels)
            if keep:
                collected["results"].append(result)
                collected["labels"].append(labels)

        def on_predict_epoch_end(self) -> None:
            if keep and torch.distributed.is_available() and torch.distributed.is_initialized():
                gathered = [None] * torch.distributed.get_world_size()
                torch.distributed.all_gather_object(gathered, (collected["results"], collected["labels"]))
                collected["results"] = [r for results, _ in gathered for r in results]
                collected["labels"] = [lab for _, labels in gathered for lab in labels]
            elif torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.barrier()  # every part is on disk before any process reads the store

    loader = torch.utils.data.DataLoader(range(len(plan.parts)), batch_sampler=Parts(), collate_fn=lambda b: b)
    lightning_predict(module, Perturber(), loader, execution)
    labels: dict = {}
    for part_labels in collected["labels"]:
        labels |= part_labels
    results = sorted(collected["results"], key=lambda r: int(r.job[0]) if len(r.job) else -1)
    return results, labels


# -- validation ---------------------------------------------------------------------------------------------------
def _resolve_vocabulary(vocabulary, model, info: EncodingInfo) -> Vocabulary:
    """The given vocabulary, else the dictionary folder the data were encoded from, else the published one."""
    from pathlib import Path

    from ..vocabulary import get_vocabulary

    if vocabulary is None:
        source = Path(str(info.params.get("vocabulary_source", "")))
        vocabulary = (
            source if info.version == model.vocabulary_version and source.is_dir() else model.vocabulary_version
        )
    vocab = get_vocabulary(vocabulary)
    if vocab.version != model.vocabulary_version or len(vocab) != model.module.config.vocab_size:
        msg = (
            f"The vocabulary ({vocab.version}, {len(vocab)} tokens) does not match the model "
            f"({model.vocabulary_version}, {model.module.config.vocab_size} tokens)."
        )
        raise ValueError(msg)
    return vocab


def _resolve_genes(genes, adata: AnnData, info: EncodingInfo, vocab: Vocabulary) -> tuple[int, ...] | None:
    """Token ids of the requested genes (``None`` for ``"all"``); unknown genes are an error."""
    if genes is None or not (isinstance(genes, str) or np.iterable(genes)):
        msg = f"genes must be 'all', a gene, or a list of genes, got {genes!r}."
        raise TypeError(msg)
    if isinstance(genes, str):
        if genes == "all":
            return None
        genes = [genes]
    genes = list(genes)
    if not genes:
        msg = "genes is empty: pass 'all' or at least one gene."
        raise ValueError(msg)
    var_position = {name: i for i, name in enumerate(adata.var_names)}
    by_vocabulary = vocab.map_gene_ids(genes)
    tokens, unknown = [], []
    for gene, token in zip(genes, by_vocabulary, strict=True):
        column = var_position.get(gene)
        if column is not None and info.var_token[column] >= 0:
            token = info.var_token[column]
        if token < 0:
            unknown.append(gene)
        else:
            tokens.append(int(token))
    if unknown:
        msg = (
            f"Genes not in the {vocab.version} vocabulary: {unknown}. Use var_names, Ensembl IDs or gene symbols of "
            "genes the model knows."
        )
        raise ValueError(msg)
    if len(set(tokens)) != len(tokens):
        msg = f"genes {genes} name the same gene more than once."
        raise ValueError(msg)
    return tuple(tokens)


def _check_states(adata, info, goal: GoalStates) -> None:
    if goal.state_key not in adata.obs.columns:
        msg = f"state_key {goal.state_key!r} is not an .obs column; available: {list(adata.obs.columns)}."
        raise KeyError(msg)
    values = adata.obs[goal.state_key].astype(object).to_numpy()
    encoded = info.lengths > 0
    missing = [s for s in goal.names if not (encoded & (values == s)).any()]
    present = set(values[encoded].tolist())
    by_text = {str(v): v for v in present}
    retyped = [s for s in missing if str(s) in by_text]
    if retyped:
        examples = ", ".join(f"{s!r} → {by_text[str(s)]!r}" for s in retyped)
        msg = (
            f"obs[{goal.state_key!r}] holds {type(next(iter(present))).__name__} values, not strings: pass the states "
            f"with that type ({examples})."
        )
        raise ValueError(msg)
    if missing:
        msg = (
            f"No encoded cells have {goal.state_key} in {missing}; values present: "
            f"{sorted(map(str, set(values)))[:20]}."
        )
        raise ValueError(msg)


def _state_matrix(adata, model, goal: GoalStates, given, layer, pooling, encoding_key, execution) -> np.ndarray:
    """Embeddings of the states, in the order start, goal, alternatives."""
    import pandas as pd

    from ._embed import state_embeddings

    names = goal.names
    if given is None:
        given = state_embeddings(
            adata,
            model,
            goal.state_key,
            groups=names,
            layer=layer,
            pooling=pooling,
            encoding_key=encoding_key,
            execution=execution.replace(progress_bar=False),
            inplace=False,
        )
    if isinstance(given, pd.DataFrame):
        given = {index: row.to_numpy() for index, row in given.iterrows()}
    missing = [s for s in names if str(s) not in {str(k) for k in given}]
    if missing:
        msg = f"state_embeddings has no embedding for the states {missing}."
        raise ValueError(msg)
    by_name = {str(k): np.asarray(v, dtype=np.float32).ravel() for k, v in given.items()}
    matrix = np.stack([by_name[str(s)] for s in names])
    if matrix.shape[1] != model.module.config.hidden_size:
        msg = f"State embeddings have {matrix.shape[1]} dimensions; the model has {model.module.config.hidden_size}."
        raise ValueError(msg)
    return matrix


def _select_cells(adata, info, cells, goal: GoalStates | None, spec: PerturbationSpec, max_cells, random_state, vocab):
    """Positions of the cells to perturb, longest first (ties in data order), as the reference processes them."""
    mask = info.lengths > 0
    if cells is not None:
        mask &= cell_mask(adata, cells)
    if goal is not None:
        mask &= adata.obs[goal.state_key].astype(object).to_numpy() == goal.start_state
    required = spec.required_tokens()
    if required:
        mask &= info.cells_holding(required, every=True)
    if not mask.any():
        names = ", ".join(f"{vocab.id_to_symbol[t]} ({vocab.id_to_gene[t]})" for t in required)
        need = "" if not required else f" expressing all of {names}"
        msg = f"No encoded cells{need} are left after the cell filters."
        raise ValueError(msg)
    selected = np.flatnonzero(mask)
    if max_cells is not None and len(selected) > max_cells:
        order = np.random.default_rng(random_state).permutation(len(selected))
        selected = selected[order[:max_cells]]
    return selected[np.argsort(-info.lengths[selected], kind="stable")]


# -- perturbations ------------------------------------------------------------------------------------------------
def _iter_jobs(info: EncodingInfo, selected: np.ndarray, spec: PerturbationSpec, max_len: int) -> Iterator:
    for start in range(0, len(selected), SEQUENCE_BLOCK):
        block = selected[start : start + SEQUENCE_BLOCK]
        for cell, ids in zip(block, info.sequences(block), strict=True):
            yield _cell_job(int(cell), ids.astype(np.int64), spec, max_len, info.has_special_tokens)


def _cell_job(cell: int, ids: np.ndarray, spec: PerturbationSpec, max_len: int, special: bool) -> ops.CellJob:
    genes = np.arange(len(ids))[ops.gene_slice(len(ids), special)]
    shift = spec.ranks_moved(len(genes)) if spec.moves_by_ranks else 0

    def edit(positions):
        if spec.perturbation == "delete":
            return ops.delete(ids, positions, special)
        if spec.perturbation == "overexpress":
            return ops.move_to_front(ids, positions, special)
        return ops.move_by(ids, positions, shift, special)

    if spec.tokens is not None:
        if spec.perturbation == "overexpress":
            original, perturbed, sources = ops.overexpress_set(
                ids, spec.tokens, max_len, special, reference_quirks=spec.reference_quirks
            )
            job = ops.CellJob(cell, original)
            job.add(perturbed, sources, spec.tokens)
            return job
        job = ops.CellJob(cell, ids)
        positions = [int(np.flatnonzero(ids == t)[0]) for t in spec.tokens]
        job.add(*edit(positions), spec.tokens)
        return job
    job = ops.CellJob(cell, ids)
    if spec.anchor is not None:
        anchor_position = int(np.flatnonzero(ids == spec.anchor)[0])
        for position in genes:
            if position != anchor_position:
                job.add(*edit([anchor_position, int(position)]), (int(ids[position]),))
        return job
    if spec.perturbation == "overexpress":
        genes = genes[1:]  # the top-ranked gene is already at the top
    for position in genes:
        job.add(*edit([int(position)]), (int(ids[position]),))
    if spec.perturbation == "delete":
        job.deleted = [int(p) for p in genes]
    return job


# -- result tables ------------------------------------------------------------------------------------------------
def _tables(adata, selected, labels, results, vocab: Vocabulary, state_columns, *, shift_labels: bool) -> dict:
    import pandas as pd

    job = np.concatenate([r.job for r in results]) if results else np.empty(0, dtype=np.int64)
    k = np.concatenate([r.perturbation for r in results]) if results else np.empty(0, dtype=np.int64)
    order = np.lexsort((k, job))
    job, k = job[order], k[order]
    cosine = np.concatenate([r.cosine for r in results])[order] if results else np.empty(0, dtype=np.float32)
    shifts = None
    if state_columns:
        shifts = np.concatenate([r.shifts for r in results])[order]

    # perturbation labels → codes of unique labels
    unique_labels: dict[tuple[int, ...], int] = {}
    label_code = np.array(
        [unique_labels.setdefault(labels[j][kk], len(unique_labels)) for j, kk in zip(job, k, strict=True)],
        dtype=np.int64,
    )
    label_list = list(unique_labels)
    symbols = vocab.id_to_symbol
    gene_ids = vocab.id_to_gene
    perturbed = ["+".join(str(symbols[t]) for t in lab) for lab in label_list]
    perturbed_id = ["+".join(str(gene_ids[t]) for t in lab) for lab in label_list]
    perturbed_token = [",".join(str(t) for t in lab) for lab in label_list]
    obs_names = adata.obs_names.to_numpy()

    def categorical(values: list[str], codes: np.ndarray):
        categories, inverse = np.unique(np.asarray(values, dtype=object), return_inverse=True)
        return pd.Categorical.from_codes(inverse[codes], categories=categories)

    cell_rows = pd.DataFrame(
        {
            "cell": pd.Categorical(obs_names[selected[job]], categories=pd.unique(obs_names[selected])),
            "perturbed": categorical(perturbed, label_code),
            "perturbed_id": categorical(perturbed_id, label_code),
            "perturbed_token": categorical(perturbed_token, label_code),
            "affected": "cell",
            "affected_id": "",
            "affected_token": np.full(len(job), -1, dtype=np.int32),
            "cosine": cosine,
        }
    )
    for i, column in enumerate(state_columns):
        cell_rows[column] = shifts[:, i]

    table = cell_rows
    gene_results = [r for r in results if r.gene_job is not None]
    if gene_results:
        g_job = np.concatenate([r.gene_job for r in gene_results])
        g_k = np.concatenate([r.gene_perturbation for r in gene_results])
        g_pos = np.concatenate([r.gene_position for r in gene_results])
        g_token = np.concatenate([r.gene_token for r in gene_results])
        g_cos = np.concatenate([r.gene_cosine for r in gene_results])
        g_order = np.lexsort((g_pos, g_k, g_job))
        g_job, g_k, g_token, g_cos = g_job[g_order], g_k[g_order], g_token[g_order], g_cos[g_order]
        if shift_labels:
            # The reference's overexpress-"all" bug: each value is filed under the next gene; the last is lost.
            same_next = np.r_[(g_job[1:] == g_job[:-1]) & (g_k[1:] == g_k[:-1]), False]
            g_token = np.r_[g_token[1:], -1][same_next]
            g_job, g_k, g_cos = g_job[same_next], g_k[same_next], g_cos[same_next]
        # every gene row's perturbation has a cell row; cell rows are sorted by (job, perturbation)
        stride = max(k.max(initial=0), g_k.max(initial=0)) + 1
        cell_keys, gene_keys = job * stride + k, g_job * stride + g_k
        g_code = label_code[np.searchsorted(cell_keys, gene_keys)]
        gene_rows = pd.DataFrame(
            {
                "cell": pd.Categorical(obs_names[selected[g_job]], categories=cell_rows["cell"].cat.categories),
                "perturbed": categorical(perturbed, g_code),
                "perturbed_id": categorical(perturbed_id, g_code),
                "perturbed_token": categorical(perturbed_token, g_code),
                "affected": pd.Categorical(symbols[g_token].astype(str)),
                "affected_id": pd.Categorical(gene_ids[g_token].astype(str)),
                "affected_token": g_token.astype(np.int32),
                "cosine": g_cos,
            }
        )
        for column in state_columns:
            gene_rows[column] = np.float32(np.nan)
        # each perturbation's cell row, then its gene rows
        keys = np.r_[cell_keys, gene_keys]
        table = pd.concat([cell_rows, gene_rows], ignore_index=True)
        for column in ("cell", "perturbed", "perturbed_id", "perturbed_token", "affected", "affected_id"):
            table[column] = table[column].astype("category")
        table = table.iloc[np.argsort(keys, kind="stable")].reset_index(drop=True)
    return {"cells": table, "genes": summarize(cell_rows, state_columns)}


def summarize(cell_rows: pd.DataFrame, state_columns: Sequence[str]) -> pd.DataFrame:
    """Per-perturbation summary of the cell rows of a perturbation table."""
    import pandas as pd

    rows = cell_rows[cell_rows["affected"] == "cell"]
    keys = ["perturbed", "perturbed_id", "perturbed_token"]
    aggregations = {"n_cells": ("cosine", "size"), "cosine_mean": ("cosine", "mean")}
    for column in state_columns:
        aggregations[f"{column}_mean"] = (column, "mean")
    summary = rows.groupby(keys, observed=True, sort=False).agg(**aggregations).reset_index()
    for column in keys:
        summary[column] = summary[column].astype(str)
    if len(state_columns) > 1:
        summary = summary.sort_values(f"{state_columns[1]}_mean", ascending=False, kind="stable")
    else:
        summary = summary.sort_values("cosine_mean", kind="stable")
    return pd.DataFrame(summary).reset_index(drop=True)
