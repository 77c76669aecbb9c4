"""``sgf.tl.perturb``: in silico perturbation (deletion, overexpression, inhibition, activation) of genes in cells.

:func:`perturb` runs these steps: check the arguments; resolve the vocabulary, the genes, the goal states and the
cells (``_selection``); plan the parts (``_planning``); open the store to resume (``_store``); run the parts in this
process (``_running``) or over several (``_distributed``), each through the engine (``_engine``); build the tables
and the summary (``_tables``, ``_summaries``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from ..._compute._execution import Execution
from ..._data._anndata import resolve_adata
from ..._settings import logger
from ._distributed import run_distributed
from ._engine import EngineSpec
from ._planning import plan_parts
from ._preview import check_result_size, expected_rows, preview
from ._running import PartRunner, run_here
from ._selection import resolve_genes, resolve_goal_states, resolve_vocabulary, select_cells, state_matrix
from ._spec import COMBINE, Combine, GoalStates, Perturbation, PerturbationSpec
from ._store import PerturbationStore, cells_fingerprint, model_fingerprint, tokens_fingerprint
from ._summaries import summarize_store
from ._tables import ResultTables
from ._two_stage import TwoStageScreen, prepare_confirmation

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData
    from mudata import MuData

    from ..._data._encoding import EncodingInfo
    from ...model import GeneformerModel
    from ...vocabulary import Vocabulary
    from ._planning import Plan


def perturb(
    data: AnnData | MuData,
    model: GeneformerModel,
    genes: str | Sequence[str] = "all",
    *,
    perturbation: Perturbation = "delete",
    combine: Combine = "together",
    anchor_gene: str | None = None,
    rank_shift: int | float = 0.25,
    pooling: Literal["mean", "cls"] | None = None,
    cell_cosine: Literal["pooled", "gene_mean"] = "pooled",
    gene_shifts: bool = False,
    screen: Literal["exact", "two_stage"] = "exact",
    n_confirm: int | float = 60,
    n_confirm_genes: int = 20,
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
    min_cells: int = 1,
    execution: Execution | Mapping | None = None,
    out: str | os.PathLike | None = None,
    mod: str = "rna",
    inplace: bool = True,
    dry_run: bool = False,
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
        IDs or symbols): perturbed **together**, as one set, in every selected cell (see ``combine``).
    perturbation
        - ``"delete"``: remove the gene(s) from the ranking.
        - ``"mask"``: replace the gene(s) with the ``<mask>`` token: the gene's information is gone, but every
          other gene keeps its rank and position (a control for the rank shift that deletion causes).
        - ``"overexpress"``: move the gene(s) to the top ranks (after ``<cls>`` in V2), keeping their order. With a
          gene list, genes absent from a cell are inserted and the cell is truncated to the model's input size;
          the original is then truncated by the same number of genes, so the comparison models the gain of the
          genes, not the loss of the tail. With ``"all"``, the top-ranked gene is skipped (it is already there).
        - ``"inhibit"`` / ``"activate"``: move the gene(s) down / up by ``rank_shift`` ranks (the reference lists
          these but never implemented them). The move is clipped to the cell's last / first gene rank; the other
          genes keep their order. With several genes, each moves in turn, in rank order.
    combine
        With a gene list: ``"together"`` (the reference's meaning) perturbs the genes as one set, in the cells that
        hold all of them (for overexpression, in every cell); ``"separately"`` perturbs each gene on its own, in
        each cell that holds it (for overexpression, in every cell), one row per (cell, gene), with the unperturbed
        cell computed once. Separately overexpressing genes a cell lacks inserts them; a cell at the input size
        then loses its last gene for all of them (its original is shared), where single-gene calls would cut the
        original only for the absent genes.
    anchor_gene
        With ``genes="all"``: perturb this gene alone, together with each other gene of the cell (pairs; the
        reference's ``combos=1``), and each other gene alone, so that ``perturbation_stats(...,
        "mixture_model")`` can report the combination statistics. The table's ``combination`` column says which
        (``"anchor"``, ``"gene"``, ``"anchor+gene"``). Only cells expressing the anchor are used.
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
    screen
        ``"exact"`` (default): every perturbation runs through the model. ``"two_stage"`` (single-gene deletion or
        overexpression of every gene, ``genes="all"``, or of a long list with ``combine="separately"``): every
        perturbation of a cell is *estimated* from a few exact ones (16 evenly spaced anchors, then ``n_confirm``
        more chosen in rounds: the cell's strongest by estimate and new anchors where the strong ones are), and the
        ``n_confirm_genes`` genes with the strongest mean value run exactly in every cell that holds them (see
        :ref:`two-stage screens <two-stage-screens>`). The table then has a boolean ``confirmed`` column: exact
        values where true, estimates (approximate) elsewhere; the ``genes`` summary gains ``n_confirmed``. With the
        defaults, 8.6× faster than the exact screen on PBMC cells of median 744 genes, finding 90% of each cell's
        exact top 20 (one small pretrained model; see the perturbation guide).
    n_confirm
        Two-stage screens: exact perturbations per cell after its 16 anchors, chosen in rounds from the estimates;
        a float in (0, 1) is a share of each cell's genes (e.g. ``0.06``: more for long cells).
    n_confirm_genes
        Two-stage screens: genes run exactly in all their cells (the strongest mean values over cells).
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
    min_cells
        The ``genes`` summary leaves out perturbations seen in fewer cells, so that genes seen in one cell do not
        top the ranking by chance (the per-cell table keeps every row).
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
    dry_run
        Run nothing; return what the run would cost: ``n_cells``, ``n_perturbations``, ``forward_passes``,
        ``result_rows`` (``gene_rows`` of them from ``gene_shifts``), ``memory_gib`` of the in-memory table, ``parts``
        and ``seconds_estimate``, the run's FLOPs at the speed of a short calibration on this device (a few
        perturbations of the median cell; approximate). Every run checks this size first: above 2 million rows it
        warns, above 50 million it is refused without ``out=``.

    Returns
    -------
    With ``inplace=False``, ``{"cells": DataFrame, "genes": DataFrame, "params": dict}``; else the same is stored in
    ``.uns[key_added]``.

    ``cells``: one row per (cell, perturbation) with ``affected == "cell"`` and, with ``gene_shifts``, one row per
    (cell, perturbation, remaining gene). Columns: ``cell`` (obs name), ``perturbed`` (symbols, ``+``-joined for a
    set), ``perturbed_id`` (Ensembl IDs), ``perturbed_token`` (token ids, ``,``-joined), with ``anchor_gene``
    ``combination``, ``affected``,
    ``affected_id``, ``affected_token`` (``-1`` for the cell), ``cosine`` and, in goal-state mode, ``shift_<state>``
    for each state.

    ``genes``: one row per perturbation (gene or set) over its cells: ``perturbed``, ``perturbed_id``,
    ``perturbed_token``, ``n_cells``, ``cosine_mean`` and ``shift_<state>_mean``; sorted by the shift toward the
    goal state (largest first), or by ``cosine_mean`` (strongest effect first).

    ``params``: the run's parameters (genes, perturbation, pooling, layer, cells, model, states …).

    With ``dry_run=True``: the cost (see ``dry_run``), whatever ``inplace``.

    With ``out``: ``{"path": the store, "genes": the summary, "params": ..., "n_rows": rows in the store}``; read
    the table with ``sgf.tl.read_perturbation_store(path)``.

    Examples
    --------
    >>> sgf.tl.perturb(adata, model, "all", max_cells=100)  # delete every gene of 100 cells  # doctest: +SKIP
    >>> adata.uns["geneformer_perturb"]["genes"].head()  # doctest: +SKIP
    >>> treatment = {"state_key": "condition", "start_state": "stim", "goal_state": "ctrl"}
    >>> sgf.tl.perturb(adata, model, "all", states=treatment)  # doctest: +SKIP
    >>> sgf.tl.perturb(adata, model, ["STAT1", "IRF7"], combine="separately")  # one row per gene  # doctest: +SKIP
    """
    start_time = time.perf_counter()
    adata = resolve_adata(data, mod)
    _check_summary_options(combine, min_cells)
    info = model.encoding_info(data, encoding_key=encoding_key, mod=mod)
    pooling, n_run = _check_arguments(
        adata, model, info, perturbation, rank_shift, pooling, cell_cosine, layer, max_cells
    )
    goal = resolve_goal_states(states, adata, info)
    vocab = resolve_vocabulary(vocabulary, model, info)  # may download the published dictionaries: after cheap checks
    tokens = resolve_genes(genes, adata, info, vocab)
    anchor = None if anchor_gene is None else resolve_genes([anchor_gene], adata, info, vocab)[0]
    spec = PerturbationSpec(
        perturbation, tokens, anchor, rank_shift, reference_quirks, separately=combine == "separately"
    )
    two_stage = _screen(screen, n_confirm, n_confirm_genes, spec)
    execution = Execution.coerce(execution)

    selected = select_cells(adata, info, cells, goal, spec, max_cells, random_state, vocab)
    max_len = model.module.config.max_position_embeddings
    plan = plan_parts(info, selected, spec, max_len, model.module.config)
    n_states = 0 if goal is None else len(goal.columns)
    if dry_run:  # the cost, from a calibration that needs no state embeddings
        engine = _engine_spec(n_run, pooling, cell_cosine, None, gene_shifts, execution)
        return preview(
            model.module, info, selected, spec, max_len, engine, plan, execution, two_stage=two_stage, n_states=n_states
        )
    cell_rows, gene_rows, _ = expected_rows(
        spec,
        info.lengths[selected],
        info.has_special_tokens,
        gene_shifts=gene_shifts,
        two_stage=two_stage,
        n_perturbations=int(plan.n_perturbations.sum()),
    )
    check_result_size(cell_rows + gene_rows, n_states, out=out)
    states_matrix = None
    if goal is not None:
        states_matrix = state_matrix(adata, model, goal, state_embeddings, layer, pooling, encoding_key, execution)
    engine = _engine_spec(n_run, pooling, cell_cosine, states_matrix, gene_shifts, execution)
    params = _run_params(
        spec, goal, model, info, selected, pooling=pooling, cell_cosine=cell_cosine, layer=layer, n_run=n_run
    )
    if spec.separately:  # which genes each cell holds decides the count: the plan built every job
        params["n_perturbations"] = int(plan.n_perturbations.sum())
    if two_stage is not None:
        params["screen"] = two_stage.to_params()
    store = None
    if out is not None:
        store = _open_store(out, params, adata, info, selected, model, states_matrix, gene_shifts, execution, plan)

    state_columns = [] if goal is None else goal.columns
    tables = ResultTables(
        adata.obs_names.to_numpy(),
        selected,
        vocab,
        state_columns,
        shift_labels=spec.shifts_gene_labels,
        anchor=spec.anchor,
        min_cells=min_cells,
    )
    runner = PartRunner(info, selected, spec, max_len, engine)
    n_run_perturbations = params["n_perturbations"]
    if two_stage is not None:
        goal_column = None if goal is None else 1  # the goal state's column: start, goal, alternatives
        runner, plan = prepare_confirmation(runner, model.module, plan, execution, two_stage, goal_column=goal_column)
        n_run_perturbations = int(plan.n_perturbations.sum())
        params["screen"]["n_confirmed"] = runner.n_confirmed
    results, labels = _run(runner, model, plan, execution, tables, store, n_perturbations=n_run_perturbations)

    elapsed = time.perf_counter() - start_time
    params["seconds"] = round(elapsed, 3)
    params["min_cells"] = min_cells  # after the store's identity: a summary option, it may change on resume
    if store is None:
        output = tables.in_memory(results, labels) | {"params": params}
    else:
        output = _summarize_store(store, state_columns, params, min_cells)
    logger.info("perturb: %d perturbations of %d cells in %.1f s", params["n_perturbations"], len(selected), elapsed)
    if not inplace:
        return output
    adata.uns[key_added] = output
    return None


def _screen(screen: str, n_confirm: int, n_confirm_genes: int, spec: PerturbationSpec) -> TwoStageScreen | None:
    """The two-stage settings (``None``: exact), checked against the perturbation."""
    if screen not in ("exact", "two_stage"):
        msg = f"screen must be 'exact' or 'two_stage', got {screen!r}."
        raise ValueError(msg)
    if screen == "exact":
        return None
    two_stage = TwoStageScreen(n_confirm, n_confirm_genes)
    two_stage.check(spec)
    return two_stage


def _check_arguments(
    adata: AnnData,
    model: GeneformerModel,
    info: EncodingInfo,
    perturbation: Perturbation,
    rank_shift: int | float,
    pooling: str | None,
    cell_cosine: str,
    layer: int,
    max_cells: int | None,
) -> tuple[str, int]:
    """The pooling and the number of layers run; refuses invalid arguments before anything is loaded or computed."""
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
    return pooling, n_run


def _check_summary_options(combine: str, min_cells: int) -> None:
    """Refuses an invalid ``combine`` or ``min_cells`` before any work."""
    if combine not in COMBINE:
        msg = f"combine must be one of {COMBINE}, got {combine!r}."
        raise ValueError(msg)
    if isinstance(min_cells, bool) or not isinstance(min_cells, int | np.integer) or min_cells < 1:
        msg = f"min_cells must be a positive integer, got {min_cells!r}."
        raise ValueError(msg)


def _engine_spec(
    n_run: int,
    pooling: str,
    cell_cosine: str,
    states_matrix: np.ndarray | None,
    gene_shifts: bool,
    execution: Execution,
) -> EngineSpec:
    """What the engine computes, with the token budget of the device that runs it."""
    device_type = execution.resolved_accelerator if execution.distributed else execution.device.type
    return EngineSpec(
        n_run=n_run,
        pooling=pooling,
        cell_cosine=cell_cosine,
        states=None if states_matrix is None else torch.as_tensor(states_matrix),
        gene_shifts=gene_shifts,
        token_budget=execution.token_budget_for(device_type),
    )


def _run_params(
    spec: PerturbationSpec,
    goal: GoalStates | None,
    model: GeneformerModel,
    info: EncodingInfo,
    selected: np.ndarray,
    *,
    pooling: str,
    cell_cosine: str,
    layer: int,
    n_run: int,
) -> dict:
    """The run's parameters, as stored with its results."""
    params = spec.to_params() | {
        "pooling": pooling,
        "cell_cosine": cell_cosine if pooling == "mean" else "cls",
        "layer": layer,
        "hidden_state": n_run,
        "n_cells": len(selected),
        "n_perturbations": spec.count(info.lengths[selected], info.has_special_tokens),
        "model": model.checkpoint or "untrained",
        "vocabulary": model.vocabulary_version,
    }
    if goal is not None:
        params["states"] = goal.to_params()
    return params


def _open_store(
    out: str | os.PathLike,
    params: dict,
    adata: AnnData,
    info: EncodingInfo,
    selected: np.ndarray,
    model: GeneformerModel,
    states_matrix: np.ndarray | None,
    gene_shifts: bool,
    execution: Execution,
    plan: Plan,
) -> PerturbationStore:
    """The store at ``out``, new or holding the same run to resume: it records the parameters, cells, weights, parts."""
    # What determines the results, not where they came from: the model's path may change between runs (a checkpoint
    # copied to node-local disk), the weights' fingerprint may not; re-encoded cells with the same names may not.
    identity = {k: v for k, v in params.items() if k != "model"} | {
        "cells": cells_fingerprint(adata.obs_names[selected]),
        "tokens": tokens_fingerprint(info, selected),
        "model_weights": model_fingerprint(model.module),
        "state_embeddings": None if states_matrix is None else states_matrix.round(6).tolist(),
        "gene_shifts": gene_shifts,
        "precision": execution.resolved_precision,
        "parts": [int(len(part)) for part in plan.parts],
    }
    return PerturbationStore.open(out, identity, len(plan.parts))


def _run(
    runner: PartRunner,
    model: GeneformerModel,
    plan: Plan,
    execution: Execution,
    tables: ResultTables,
    store: PerturbationStore | None,
    *,
    n_perturbations: int,
) -> tuple[list, dict]:
    """Run the parts a store does not hold yet (all without a store), here or over several processes.

    Each finished part goes to the store; without one, the results and labels of all parts are returned.
    """
    done = set() if store is None else store.done_parts()
    todo = [p for p in range(len(plan.parts)) if p not in done]
    if done:
        logger.info("perturb: resuming %s: %d of %d parts done", store.path, len(done), len(plan.parts))

    def part_done(part: int, result, labels: dict) -> None:
        if store is not None:
            store.write_part(part, tables.table([result], labels))

    keep = store is None
    if execution.distributed:
        return run_distributed(runner, model.module, plan, todo, execution, part_done, keep=keep)
    return run_here(runner, model.module, plan, todo, execution, part_done, keep=keep, n_perturbations=n_perturbations)


def _summarize_store(store: PerturbationStore, state_columns: list[str], params: dict, min_cells: int) -> dict:
    """What ``perturb`` returns for a store, whose summary it writes there too."""
    summary = summarize_store(store, state_columns, min_cells=min_cells)
    store.write_summary(summary)
    # An absolute path and the run's identity: read back after a chdir, they name this store or fail clearly.
    return {
        "path": str(store.path.resolve()),
        "run": store.run_id,
        "genes": summary,
        "params": params,
        "n_rows": store.n_rows,
    }
