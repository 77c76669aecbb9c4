"""The two-stage screen: estimates and each cell's strongest run exactly (stage 1), then the top genes (stage 2).

Stage 1 covers single-gene deletions (or moves to the top) of every gene, or of a gene list perturbed separately:
per cell, ``n_anchors`` exact perturbations at evenly spaced ranks, then ``n_confirm`` more chosen in rounds from the
estimates (every exact run is also an anchor of the estimates). Listed genes a cell lacks, which overexpression
inserts and no estimate covers, run exactly too. Stage 2 then takes the ``n_confirm_genes`` genes with the strongest
mean value over cells (exact or estimated) and runs them exactly in every cell that holds them and has not run them
yet, so that the per-gene summary's top genes are exact in all their cells. It runs part by part like an exact screen
(several processes, stores and resume included); each part's table holds every perturbation, with its exact values
where ``confirmed`` is true and its stage-1 estimate elsewhere.

Stage 1 is deterministic and recomputed when a store is resumed, so the candidates of a resumed run are the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ._distributed import run_distributed
from ._engine import ChunkResult, run_chunk
from ._jobs import iter_sequences, screen_targets, targets_job
from ._running import run_here
from ._stage_one import ROUND_BISECT, ROUND_CONFIRM, StageOneRunner, attach_gene_rows, strength

if TYPE_CHECKING:
    import torch

    from ..._compute._execution import Execution
    from ._planning import Plan
    from ._running import PartRunner
    from ._spec import PerturbationSpec

#: Exact anchor perturbations per cell that start stage 1, spread evenly over its ranks (deletion: the first gene's
#: included, the original cell being a virtual anchor at the end; overexpression: the last gene's included).
N_ANCHORS = 16


@dataclass(frozen=True)
class TwoStageScreen:
    """Settings of a two-stage screen (see :func:`~scgeneformer.tl.perturb`'s ``screen``).

    Parameters
    ----------
    n_confirm
        Exact perturbations per cell after its anchors, chosen in rounds (its strongest by estimate, and new anchors
        where the strong ones are): a number, or a share of the cell's genes (a float in (0, 1)).
    n_confirm_genes
        Genes confirmed exactly in every cell that holds them: those with the strongest mean value over cells.
    n_anchors
        Exact anchor perturbations per cell that start stage 1.
    """

    n_confirm: int | float = 60
    n_confirm_genes: int = 20
    n_anchors: int | None = None  # default: N_ANCHORS

    def __post_init__(self) -> None:
        if self.n_anchors is None:
            object.__setattr__(self, "n_anchors", N_ANCHORS)
        confirm = self.n_confirm
        if isinstance(confirm, float) and not 0 < confirm < 1:
            msg = f"n_confirm must be an integer >= 0 or a share of each cell's genes in (0, 1), got {confirm!r}."
            raise ValueError(msg)
        for name in ("n_confirm", "n_confirm_genes", "n_anchors"):
            value = getattr(self, name)
            if name == "n_confirm" and isinstance(value, float):
                continue
            minimum = 1 if name == "n_anchors" else 0
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
                msg = f"{name} must be an integer >= {minimum}, got {value!r}."
                raise ValueError(msg)

    def confirmations(self, n_genes: int) -> int:
        """Exact perturbations after the anchors for a cell of ``n_genes`` perturbable genes."""
        if isinstance(self.n_confirm, float):
            return int(np.ceil(self.n_confirm * n_genes))
        return int(self.n_confirm)

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
            "n_confirm": self.n_confirm if isinstance(self.n_confirm, float) else int(self.n_confirm),
            "n_confirm_genes": int(self.n_confirm_genes),
            "n_anchors": int(self.n_anchors),
            "round": {"bisect": ROUND_BISECT, "confirm": ROUND_CONFIRM},
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
    """Run stage 1 over every part (here or over several processes) and choose stage 2's candidates.

    Returns the runner of stage 2, and the plan whose per-part counts and costs are its confirmations (for progress
    and for sharing the parts out).
    """
    stage_one = StageOneRunner(
        runner.info, runner.selected, runner.spec, runner.max_len, runner.engine, screen, goal_column
    )
    every_part = list(range(len(plan.parts)))

    def nothing(part, result, labels) -> None:
        return None

    if execution.distributed:
        results, labels = run_distributed(stage_one, module, plan, every_part, execution, nothing, keep=True)
    else:
        results, labels = run_here(
            stage_one,
            module,
            plan,
            every_part,
            execution,
            nothing,
            keep=True,
            n_perturbations=int(plan.n_perturbations.sum()),
            desc="stage 1",
        )
    first = _by_job(results)
    candidates = choose_candidates(first, labels, screen, goal_column=goal_column)
    counts = np.array([sum(len(candidates.get(int(j), ())) for j in part) for part in plan.parts], dtype=np.int64)
    # every part still runs in stage 2 (its table is written), so none costs nothing when the parts are shared out
    cost = plan.cost * np.maximum(counts, 1) / np.maximum(plan.n_perturbations, 1)
    return ConfirmRunner(runner, first, candidates), plan._replace(cost=cost, n_perturbations=counts)


@dataclass
class FirstStage:
    """One job's stage-1 values, indexed by perturbation: estimates, or exact values where ``confirmed``."""

    cosine: np.ndarray
    shifts: np.ndarray | None
    confirmed: np.ndarray
    #: gene rows of its exact runs (``gene_shifts``): perturbation, token, position, cosine
    genes: tuple[np.ndarray, ...] | None = None


def _by_job(results: list[ChunkResult]) -> dict[int, FirstStage]:
    """Each job's stage-1 values, indexed by perturbation."""
    first: dict[int, FirstStage] = {}
    for result in results:
        for job in np.unique(result.job):
            rows = np.flatnonzero(result.job == job)
            rows = rows[np.argsort(result.perturbation[rows], kind="stable")]
            shifts = None if result.shifts is None else result.shifts[rows]
            genes = None
            if result.gene_job is not None:
                at = np.flatnonzero(result.gene_job == job)
                genes = (result.gene_perturbation[at], result.gene_token[at], result.gene_position[at],
                         result.gene_cosine[at])  # fmt: skip
            first[int(job)] = FirstStage(result.cosine[rows], shifts, result.confirmed[rows], genes)
    return first


def choose_candidates(
    first: dict[int, FirstStage],
    labels: dict[int, list[tuple[int, ...]]],
    screen: TwoStageScreen,
    *,
    goal_column: int | None,
) -> dict[int, np.ndarray]:
    """Per job, the perturbations (sorted indices) stage 2 runs: the top genes across cells, where not exact yet.

    The top genes are the ``n_confirm_genes`` with the strongest mean value over the cells holding them (exact values
    where stage 1 ran them, estimates elsewhere); deterministic (ties: lower token).
    """
    totals: dict[int, list[float]] = {}
    for job in sorted(first):
        score = strength(first[job].cosine, first[job].shifts, goal_column)
        for k, label in enumerate(labels[job]):
            total = totals.setdefault(int(label[0]), [0.0, 0])
            total[0] += float(score[k])
            total[1] += 1
    top: set[int] = set()
    if screen.n_confirm_genes and totals:
        tokens = np.array(sorted(totals), dtype=np.int64)
        means = np.array([totals[int(t)][0] / totals[int(t)][1] for t in tokens])
        top = set(tokens[np.argsort(-means, kind="stable")[: screen.n_confirm_genes]].tolist())
    return {
        job: np.array(
            [k for k, label in enumerate(labels[job]) if label[0] in top and not first[job].confirmed[k]],
            dtype=np.int64,
        )
        for job in first
    }


class ConfirmRunner:
    """Stage 2 of one part: the candidates run exactly; every other perturbation keeps its stage-1 value."""

    def __init__(self, runner: PartRunner, first: dict[int, FirstStage], candidates: dict[int, np.ndarray]) -> None:
        self.runner, self.first, self.candidates = runner, first, candidates
        #: exact perturbations of the screen: stage 1's confirmed rows and stage 2's candidates
        self.n_confirmed = sum(int(f.confirmed.sum()) for f in first.values()) + sum(map(len, candidates.values()))

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
        """Stage-1 values of every perturbation of the jobs, with stage 2's exact values in place."""
        first = [self.first[j] for j in job_indices]
        cosine = [f.cosine.astype(np.float32) for f in first]
        has_states = bool(first) and first[0].shifts is not None
        start = np.cumsum([0, *[len(c) for c in cosine]])
        offset = dict(zip(job_indices, start[:-1], strict=False))
        result = ChunkResult(
            job=np.concatenate([np.full(len(c), j, dtype=np.int64) for j, c in zip(job_indices, cosine, strict=True)])
            if first
            else np.empty(0, dtype=np.int64),
            perturbation=np.concatenate([np.arange(len(c), dtype=np.int64) for c in cosine])
            if first
            else np.empty(0, dtype=np.int64),
            cosine=np.concatenate(cosine) if first else np.empty(0, dtype=np.float32),
            shifts=np.concatenate([f.shifts.astype(np.float32) for f in first]) if has_states else None,
        )
        result.confirmed = np.concatenate([f.confirmed for f in first]) if first else np.empty(0, dtype=bool)
        genes = [(j, f.genes) for j, f in zip(job_indices, first, strict=True) if f.genes is not None]
        if exact is not None and len(exact.job):
            # the exact rows' perturbation indices point into the candidates: back to the job's own indices
            k = self._job_index(exact.job, exact.perturbation)
            rows = np.array([offset[int(j)] for j in exact.job], dtype=np.int64) + k
            result.cosine[rows] = exact.cosine
            if result.shifts is not None:
                result.shifts[rows] = exact.shifts
            result.confirmed[rows] = True
            if exact.gene_job is not None:
                for j in np.unique(exact.gene_job):
                    at = exact.gene_job == j
                    perturbation = self._job_index(exact.gene_job[at], exact.gene_perturbation[at])
                    genes.append((int(j), (perturbation, exact.gene_token[at], exact.gene_position[at],
                                           exact.gene_cosine[at])))  # fmt: skip
        attach_gene_rows(result, genes)
        return result

    def _job_index(self, jobs: np.ndarray, candidate_index: np.ndarray) -> np.ndarray:
        """The job's own perturbation index of each row indexed into that job's candidates."""
        out = np.empty(len(jobs), dtype=np.int64)
        for job in np.unique(jobs):
            rows = jobs == job
            out[rows] = self.candidates[int(job)][candidate_index[rows]]
        return out
