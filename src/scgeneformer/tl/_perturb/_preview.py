"""What a screen will cost before it runs: forward passes, result rows, memory and, from a short calibration, time.

:func:`~scgeneformer.tl.perturb` with ``dry_run=True`` returns :func:`preview`; every run checks the size of its
in-memory result first (:func:`check_result_size`): large tables are announced, very large ones refused without a
store (``out=``).
"""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING

import numpy as np

from ..._compute._engine import inference
from . import _engine
from ._jobs import CellJob, cell_job

if TYPE_CHECKING:
    import torch

    from ..._compute._execution import Execution
    from ..._data._encoding import EncodingInfo
    from ._engine import EngineSpec
    from ._planning import Plan
    from ._spec import PerturbationSpec
    from ._two_stage import TwoStageScreen

#: In-memory results above this many rows are announced with a warning (a store keeps memory flat).
WARN_ROWS = 2_000_000
#: In-memory results above this many rows are refused without ``out=`` (several GB with the building overhead).
MAX_ROWS = 50_000_000
#: Bytes of one result row in memory (category codes, the affected token and the cosine), plus 4 per state column.
ROW_BYTES = 36
#: Perturbed sequences of the median cell timed by the calibration (and a quarter of them: the fixed cost per cell).
CALIBRATION_SEQUENCES = 24


def _flops(lengths: np.ndarray, config) -> np.ndarray:
    """Model FLOPs (up to a constant factor) of sequences of these lengths, as ``_planning`` costs parts."""
    d, f = config.hidden_size, config.intermediate_size
    lengths = np.asarray(lengths, dtype=np.float64)
    return lengths * (8 * d + 4 * f + 4 * lengths) * d


def expected_rows(
    spec: PerturbationSpec,
    lengths: np.ndarray,
    special: bool,
    *,
    gene_shifts: bool,
    two_stage: TwoStageScreen | None,
    n_perturbations: int | None = None,
) -> tuple[int, int, int]:
    """``(cell rows, gene rows, exact perturbations)`` of a run on cells of these token lengths (gene rows: about).

    ``n_perturbations``: the plan's count, for gene lists perturbed separately (it depends on the genes cells hold).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    ends = 2 if special else 0
    if spec.all_genes:
        counts, perturbed_length = spec.perturbed_lengths(lengths, special)
        per_sequence = 1
    else:
        per_sequence = 1 if spec.separately else len(spec.tokens)
        counts = np.ones(len(lengths), dtype=np.float64)
        if spec.separately and n_perturbations is not None and len(lengths):
            counts = counts * n_perturbations / len(lengths)
        perturbed_length = lengths - (per_sequence if spec.perturbation == "delete" else 0)
    # perturbed genes are not compared; deleted ones are gone already
    not_compared = 0 if spec.perturbation == "delete" else per_sequence
    compared = np.maximum(np.asarray(perturbed_length, dtype=np.float64) - ends - not_compared, 0)
    exact = counts
    if two_stage is not None:
        rounds = two_stage.n_confirm
        if isinstance(rounds, float):  # a share of each cell's genes
            rounds = np.ceil(rounds * counts)
        exact = np.minimum(counts, two_stage.n_anchors + rounds + two_stage.n_confirm_genes)
    cell_rows = int(round(float(np.sum(counts))))
    gene_rows = int(round(float(np.sum(exact * compared)))) if gene_shifts else 0
    return cell_rows, gene_rows, int(round(float(np.sum(exact))))


def check_result_size(rows: int, n_states: int, *, out) -> None:
    """Announce a large in-memory result, refuse a very large one without a store."""
    if out is not None or rows <= WARN_ROWS:
        return
    size = f"{rows:,} result rows (about {rows * (ROW_BYTES + 4 * n_states) / 2**30:.1f} GiB in memory)"
    if rows > MAX_ROWS:
        msg = (
            f"This run would hold {size}: write it to a store with out='folder' (memory stays flat and the run can "
            "resume), perturb fewer cells (max_cells=) or leave out gene_shifts; dry_run=True shows the cost."
        )
        raise ValueError(msg)
    warnings.warn(
        f"This run will hold {size}; out='folder' streams them to a store instead (dry_run=True shows the cost).",
        UserWarning,
        stacklevel=3,
    )


def preview(
    module: torch.nn.Module,
    info: EncodingInfo,
    selected: np.ndarray,
    spec: PerturbationSpec,
    max_len: int,
    engine: EngineSpec,
    plan: Plan,
    execution: Execution,
    *,
    two_stage: TwoStageScreen | None,
    n_states: int,
    calibrate: bool = True,
) -> dict:
    """The cost of a run: sequences, forward passes, result rows and memory, and its time on this device.

    The time is a calibration's cost per cell plus its seconds per FLOP (from timing a few and more perturbations of
    the median-length cell after a warm-up) times the run's FLOPs: approximate (load and batching vary).
    """
    lengths = info.lengths[selected]
    special = info.has_special_tokens
    cell_rows, gene_rows, exact = expected_rows(
        spec,
        lengths,
        special,
        gene_shifts=engine.gene_shifts,
        two_stage=two_stage,
        n_perturbations=int(plan.n_perturbations.sum()),
    )
    config = module.config
    originals = _flops(lengths, config).sum()
    if two_stage is None:
        flops = plan.cost.sum() + originals
        passes = exact + len(selected)
    else:  # stage 1: the original, the anchors and the rounds' runs; stage 2: the top genes and their originals
        flops = originals * 2 + plan.cost.sum() * exact / max(cell_rows, 1)
        passes = len(selected) * 2 + exact
    rows = cell_rows + gene_rows
    result = {
        "n_cells": len(selected),
        "n_perturbations": cell_rows,
        "forward_passes": int(passes),
        "result_rows": rows,
        "gene_rows": gene_rows,
        "memory_gib": round(rows * (ROW_BYTES + 4 * n_states) / 2**30, 3),
        "parts": len(plan.parts),
        "device": str(execution.device) if not execution.distributed else execution.resolved_accelerator,
    }
    if two_stage is not None:
        result["exact_perturbations_at_most"] = exact
    if calibrate and len(selected):
        per_cell, per_flop, seconds = _calibrate(module, info, selected, spec, max_len, engine, execution)
        n_cell_setups = len(selected) * (2 if two_stage is not None else 1)
        result["seconds_estimate"] = round(float(per_cell * n_cell_setups + per_flop * flops), 1)
        result["calibration_seconds"] = round(seconds, 3)
    return result


def _calibrate(
    module, info: EncodingInfo, selected: np.ndarray, spec: PerturbationSpec, max_len: int, engine, execution
) -> tuple[float, float, float]:
    """Seconds per cell (set-up, original) and per FLOP of perturbed sequences, and the calibration's own seconds.

    From timed runs of a few and of more perturbations of the median-length selected cell, after a warm-up.
    """
    lengths = info.lengths[selected]
    cell = int(selected[np.argsort(lengths, kind="stable")[len(lengths) // 2]])
    ids = info.sequences(np.array([cell]))[0].astype(np.int64)
    job = cell_job(cell, ids, spec, max_len, info.has_special_tokens, info.mask_id)
    n = len(job.perturbed)
    sizes = sorted({min(CALIBRATION_SEQUENCES // 4, n), min(CALIBRATION_SEQUENCES, n)})
    timings, flops = [], []
    begin = time.perf_counter()
    with inference(module, execution.device, execution) as running:
        _engine.run_chunk(running, [(0, _sample(job, sizes[0]))], engine)  # warm-up
        for size in sizes:
            sample = _sample(job, size)
            start = time.perf_counter()
            _engine.run_chunk(running, [(0, sample)], engine)
            timings.append(time.perf_counter() - start)
            flops.append(_flops([len(p) for p in sample.perturbed], module.config).sum())
    if len(sizes) == 1 or flops[1] <= flops[0]:
        return 0.0, timings[-1] / max(flops[-1], 1.0), time.perf_counter() - begin
    per_flop = max(timings[1] - timings[0], 0.0) / (flops[1] - flops[0])
    return max(timings[0] - per_flop * flops[0], 0.0), per_flop, time.perf_counter() - begin


def _sample(job: CellJob, size: int) -> CellJob:
    """The job's first ``size`` perturbations, run as the screen runs them (single-gene deletions share a layer)."""
    sample = CellJob(job.cell, job.original, deleted=None if job.deleted is None else job.deleted[:size])
    for k in range(size):
        sample.add(job.perturbed[k], job.sources[k], job.labels[k])
    return sample
