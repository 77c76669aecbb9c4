"""Running a plan's parts in this process: each part's cells become jobs, which run through the engine as one chunk."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ..._compute._engine import inference
from ..._utils._progress import progress_bar
from . import _engine
from ._jobs import iter_jobs

if TYPE_CHECKING:
    import torch

    from ..._compute._execution import Execution
    from ..._data._encoding import EncodingInfo
    from ._engine import ChunkResult, EngineSpec
    from ._planning import Plan
    from ._spec import PerturbationSpec

#: Called with ``(part, result, labels)`` as each part finishes (e.g. to write it to a store).
PartDone = Callable[[int, "ChunkResult", dict], None]


class PartRunner:
    """Runs one part: builds its cells' perturbations and passes them through the engine.

    Parameters
    ----------
    info
        The encoding of the data.
    selected
        Positions of the perturbed cells, in processing order; a part holds positions in ``selected``.
    spec
        What each perturbation does.
    max_len
        The model's input size.
    engine
        What the engine computes for every perturbation.
    """

    def __init__(
        self, info: EncodingInfo, selected: np.ndarray, spec: PerturbationSpec, max_len: int, engine: EngineSpec
    ) -> None:
        self.info, self.selected, self.spec, self.max_len, self.engine = info, selected, spec, max_len, engine

    def run(self, module: torch.nn.Module, part: np.ndarray, progress=None) -> tuple[ChunkResult, dict]:
        """The part's results, and the perturbed tokens of each of its jobs (by job index)."""
        cells = iter_jobs(self.info, self.selected[part], self.spec, self.max_len)
        jobs = list(zip(part.tolist(), cells, strict=True))
        labels = {j: job.labels for j, job in jobs}
        return _engine.run_chunk(module, jobs, self.engine, progress), labels


def run_here(
    runner: PartRunner,
    module: torch.nn.Module,
    plan: Plan,
    todo: list[int],
    execution: Execution,
    part_done: PartDone,
    *,
    keep: bool,
    n_perturbations: int,
    desc: str = "perturbations",
) -> tuple[list[ChunkResult], dict]:
    """Run the parts ``todo`` in this process, on ``execution.device``, with a progress bar over all perturbations.

    Returns the results and labels of the parts when ``keep``, else nothing (they went to ``part_done``).
    """
    results, labels = [], {}
    pending = set(todo)
    done = [p for p in range(len(plan.parts)) if p not in pending]
    with (
        progress_bar(
            total=n_perturbations,
            initial=int(sum(plan.n_perturbations[p] for p in done)),
            desc=desc,
            unit="seq",
            disable=not execution.show_progress,
        ) as bar,
        inference(module, execution.device, execution) as running,
    ):
        for part in todo:
            result, part_labels = runner.run(running, plan.parts[part], progress=bar)
            part_done(part, result, part_labels)
            if keep:
                results.append(result)
                labels |= part_labels
    return results, labels
