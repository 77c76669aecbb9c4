"""The two-stage screen: estimate every single-gene perturbation (``_estimate``), then run the strongest exactly.

Stage 1 estimates every single-gene deletion (or move to the top) of every cell, of every gene or of a gene list
perturbed separately, from ``1 + N_ANCHORS`` forward passes per cell. The candidates are then chosen from all cells'
estimates: per cell, the ``n_confirm`` strongest perturbations (and every listed gene the cell lacks, which
overexpression inserts and stage 1 cannot estimate); across cells,
the ``n_confirm_genes`` genes with the strongest mean estimate, in every cell that holds them (so that the per-gene
summary's top genes are exact in all their cells). Stage 2 runs the candidates through the exact engine, part by part
like an exact screen (several processes, stores and resume included); each part's table holds every perturbation,
its exact values where ``confirmed`` is true and its stage-1 estimate elsewhere.

Stage 1 is deterministic and recomputed when a store is resumed, so the candidates of a resumed run are the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ._distributed import run_distributed
from ._engine import ChunkResult, run_chunk
from ._estimate import EstimateRunner
from ._jobs import iter_sequences, screen_targets, targets_job
from ._running import run_here

if TYPE_CHECKING:
    import torch

    from ..._compute._execution import Execution
    from ._planning import Plan
    from ._running import PartRunner
    from ._spec import PerturbationSpec

#: Exact anchor perturbations per cell in stage 1, spread evenly over its ranks (the first gene's included; the original
#: cell is a virtual anchor at the end). More anchors follow effects that vary along the ranks (measured in
#: ``benchmarks/bench_screen.py``) at one forward pass each.
N_ANCHORS = 32


@dataclass(frozen=True)
class TwoStageScreen:
    """Settings of a two-stage screen (see :func:`~scgeneformer.tl.perturb`'s ``screen``).

    Parameters
    ----------
    n_confirm
        Perturbations confirmed exactly per cell: its strongest by the stage-1 estimate.
    n_confirm_genes
        Genes confirmed exactly in every cell that holds them: those with the strongest mean estimate over cells.
    n_anchors
        Exact anchor perturbations per cell in stage 1.
    """

    n_confirm: int = 60
    n_confirm_genes: int = 20
    n_anchors: int | None = None  # default: N_ANCHORS

    def __post_init__(self) -> None:
        if self.n_anchors is None:
            object.__setattr__(self, "n_anchors", N_ANCHORS)
        for name in ("n_confirm", "n_confirm_genes", "n_anchors"):
            value = getattr(self, name)
            minimum = 1 if name == "n_anchors" else 0
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
                msg = f"{name} must be an integer >= {minimum}, got {value!r}."
                raise ValueError(msg)

    @staticmethod
    def check(spec: PerturbationSpec) -> None:
        """Refuse what the two-stage screen does not estimate, before any work."""
        problems = []
        if spec.perturbation not in ("delete", "overexpress"):
            problems.append(f"perturbation={spec.perturbation!r}")
        if not spec.all_genes and not spec.separately:
            problems.append("a gene list perturbed together (combine='together')")
        if spec.anchor is not None:
            problems.append("an anchor_gene")
        if spec.reference_quirks:
            problems.append("reference_quirks=True")
        if problems:
            msg = (
                "screen='two_stage' estimates single-gene deletions and overexpressions of every gene "
                "(genes='all') or of a gene list perturbed one gene at a time (combine='separately'), without "
                f"anchor_gene or reference_quirks; got {', '.join(problems)}. Use screen='exact' for this run."
            )
            raise ValueError(msg)

    def to_params(self) -> dict:
        return {
            "method": "two_stage",
            "n_confirm": int(self.n_confirm),
            "n_confirm_genes": int(self.n_confirm_genes),
            "n_anchors": int(self.n_anchors),
        }


def prepare_confirmation(
    runner: PartRunner,
    module: torch.nn.Module,
    plan: Plan,
    execution: Execution,
    screen: TwoStageScreen,
    *,
    goal_column: int | None,
) -> tuple[ConfirmRunner, Plan]:
    """Run stage 1 over every part (here or over several processes) and choose the candidates.

    Returns the runner of stage 2, and the plan whose per-part counts and costs are its confirmations (for progress
    and for sharing the parts out).
    """
    estimator = EstimateRunner(
        runner.info, runner.selected, runner.spec, runner.max_len, runner.engine, screen.n_anchors
    )
    every_part = list(range(len(plan.parts)))

    def nothing(part, result, labels) -> None:
        return None

    if execution.distributed:
        results, labels = run_distributed(estimator, module, plan, every_part, execution, nothing, keep=True)
    else:
        results, labels = run_here(
            estimator,
            module,
            plan,
            every_part,
            execution,
            nothing,
            keep=True,
            n_perturbations=int(plan.n_perturbations.sum()),
            desc="estimates",
        )
    estimates = _by_job(results)
    candidates = choose_candidates(estimates, labels, screen, goal_column=goal_column)
    counts = np.array([sum(len(candidates.get(int(j), ())) for j in part) for part in plan.parts], dtype=np.int64)
    cost = plan.cost * np.where(plan.n_perturbations > 0, counts / np.maximum(plan.n_perturbations, 1), 0)
    return ConfirmRunner(runner, estimates, candidates), plan._replace(cost=cost, n_perturbations=counts)


def _by_job(results: list[ChunkResult]) -> dict[int, tuple[np.ndarray, np.ndarray | None]]:
    """Each job's estimated cosines and shifts, indexed by perturbation."""
    estimates: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
    for result in results:
        for job in np.unique(result.job):
            rows = np.flatnonzero(result.job == job)
            rows = rows[np.argsort(result.perturbation[rows], kind="stable")]
            shifts = None if result.shifts is None else result.shifts[rows]
            estimates[int(job)] = (result.cosine[rows], shifts)
    return estimates


def strength(cosine: np.ndarray, shifts: np.ndarray | None, goal_column: int | None) -> np.ndarray:
    """How strong each perturbation is (larger: stronger): the shift toward the goal state, else ``1 - cosine``."""
    if goal_column is not None and shifts is not None:
        return np.asarray(shifts[:, goal_column], dtype=np.float64)
    return 1.0 - np.asarray(cosine, dtype=np.float64)


def choose_candidates(
    estimates: dict[int, tuple[np.ndarray, np.ndarray | None]],
    labels: dict[int, list[tuple[int, ...]]],
    screen: TwoStageScreen,
    *,
    goal_column: int | None,
) -> dict[int, np.ndarray]:
    """Per job, the perturbations (sorted indices) to confirm exactly; deterministic (ties: lower index or token).

    Perturbations without an estimate (NaN: genes a cell lacks, inserted by overexpression) are always confirmed.
    """
    chosen: dict[int, set[int]] = {}
    totals: dict[int, list[float]] = {}
    for job in sorted(estimates):
        cosine, shifts = estimates[job]
        score = strength(cosine, shifts, goal_column)
        unknown = np.isnan(score)
        ranked = np.flatnonzero(~unknown)[np.argsort(-score[~unknown], kind="stable")]
        chosen[job] = set(ranked[: screen.n_confirm].tolist()) | set(np.flatnonzero(unknown).tolist())
        for k, token in enumerate(label[0] for label in labels[job]):
            if unknown[k]:
                continue
            total = totals.setdefault(int(token), [0.0, 0])
            total[0] += float(score[k])
            total[1] += 1
    if screen.n_confirm_genes:
        tokens = np.array(sorted(totals), dtype=np.int64)
        means = np.array([totals[int(t)][0] / totals[int(t)][1] for t in tokens])
        top = set(tokens[np.argsort(-means, kind="stable")[: screen.n_confirm_genes]].tolist())
        for job in chosen:
            chosen[job] |= {k for k, label in enumerate(labels[job]) if label[0] in top}
    return {job: np.array(sorted(ks), dtype=np.int64) for job, ks in chosen.items()}


class ConfirmRunner:
    """Stage 2 of one part: the candidates run exactly; every other perturbation keeps its stage-1 estimate."""

    def __init__(
        self,
        runner: PartRunner,
        estimates: dict[int, tuple[np.ndarray, np.ndarray | None]],
        candidates: dict[int, np.ndarray],
    ) -> None:
        self.runner, self.estimates, self.candidates = runner, estimates, candidates

    def run(self, module: torch.nn.Module, part: np.ndarray, progress=None) -> tuple[ChunkResult, dict]:
        """The part's results (``confirmed`` marks exact rows) and the perturbed tokens of each of its jobs."""
        r = self.runner
        special = r.info.has_special_tokens
        labels, subsets = {}, []
        for j, (cell, ids) in zip(part.tolist(), iter_sequences(r.info, r.selected[part]), strict=True):
            targets = screen_targets(ids, r.spec, r.max_len, special)
            labels[j] = targets.labels
            if len(self.candidates[j]):  # only the candidates' perturbed copies are built
                subsets.append((j, targets_job(cell, targets, self.candidates[j], r.spec, r.max_len, special)))
        exact = run_chunk(module, subsets, r.engine, progress) if subsets else None
        return self._merge(list(labels), exact), labels

    def _merge(self, job_indices: list[int], exact: ChunkResult | None) -> ChunkResult:
        """Estimates of every perturbation of the jobs, replaced by the exact values of the confirmed ones."""
        cosine = [self.estimates[j][0].astype(np.float32) for j in job_indices]
        has_states = self.estimates[job_indices[0]][1] is not None if job_indices else False
        shifts = [self.estimates[j][1].astype(np.float32) for j in job_indices] if has_states else None
        start = np.cumsum([0, *[len(c) for c in cosine]])
        offset = dict(zip(job_indices, start[:-1], strict=False))
        result = ChunkResult(
            job=np.concatenate([np.full(len(c), j, dtype=np.int64) for j, c in zip(job_indices, cosine, strict=True)])
            if job_indices
            else np.empty(0, dtype=np.int64),
            perturbation=np.concatenate([np.arange(len(c), dtype=np.int64) for c in cosine])
            if job_indices
            else np.empty(0, dtype=np.int64),
            cosine=np.concatenate(cosine) if job_indices else np.empty(0, dtype=np.float32),
            shifts=np.concatenate(shifts) if shifts else None,
        )
        result.confirmed = np.zeros(len(result.job), dtype=bool)
        if exact is None or not len(exact.job):
            return result
        # the exact rows' perturbation indices point into the candidates: back to the job's own indices
        k = self._job_index(exact.job, exact.perturbation)
        rows = np.array([offset[int(j)] for j in exact.job], dtype=np.int64) + k
        result.cosine[rows] = exact.cosine
        if result.shifts is not None:
            result.shifts[rows] = exact.shifts
        result.confirmed[rows] = True
        if exact.gene_job is not None:
            result.gene_job = exact.gene_job
            result.gene_perturbation = self._job_index(exact.gene_job, exact.gene_perturbation)
            result.gene_token, result.gene_position = exact.gene_token, exact.gene_position
            result.gene_cosine = exact.gene_cosine
        return result

    def _job_index(self, jobs: np.ndarray, candidate_index: np.ndarray) -> np.ndarray:
        """The job's own perturbation index of each row indexed into that job's candidates."""
        out = np.empty(len(jobs), dtype=np.int64)
        for job in np.unique(jobs):
            rows = jobs == job
            out[rows] = self.candidates[int(job)][candidate_index[rows]]
        return out
