"""Running a plan's parts over the processes of a Lightning run, shared out by cost; every process gets all results."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..._compute._batching import world
from ..._compute._lightning import gather_objects, lightning_predict, wait_for_all_processes
from ._planning import share_by_cost

if TYPE_CHECKING:
    from ..._compute._execution import Execution
    from ._engine import ChunkResult
    from ._planning import Plan
    from ._running import PartDone, PartRunner


class PartSampler(torch.utils.data.Sampler):
    """The parts ``todo`` that the iterating process runs, one per batch, shared out by cost once processes exist."""

    def __init__(self, cost: np.ndarray, todo: list[int]) -> None:
        self.cost, self.todo = cost, todo

    def _mine(self) -> list[list[int]]:
        size, rank = world()
        shares = share_by_cost(self.cost[self.todo], size)
        return [[self.todo[i]] for i in shares[rank]]

    def __iter__(self):
        return iter(self._mine())

    def __len__(self) -> int:
        return len(self._mine())


def run_distributed(
    runner: PartRunner,
    module: torch.nn.Module,
    plan: Plan,
    todo: list[int],
    execution: Execution,
    part_done: PartDone,
    *,
    keep: bool,
) -> tuple[list[ChunkResult], dict]:
    """Run the parts ``todo`` through the Lightning predict harness, one process per device.

    Each process runs its share of the parts and hands each finished part to ``part_done``. With ``keep``, every
    process then receives the results and labels of all parts (results in part order); without, the processes only
    wait for each other, so that every part is on disk before any process reads the store.
    """
    collected: list[tuple[ChunkResult, dict]] = []

    def step(module: torch.nn.Module, batch: list[int]) -> None:
        part = int(batch[0])
        result, labels = runner.run(module, plan.parts[part])
        part_done(part, result, labels)
        if keep:
            collected.append((result, labels))

    def at_end() -> None:
        if keep:
            collected[:] = [item for items in gather_objects(collected) for item in items]
        else:
            wait_for_all_processes()

    loader = torch.utils.data.DataLoader(
        range(len(plan.parts)), batch_sampler=PartSampler(plan.cost, todo), collate_fn=lambda batch: batch
    )
    lightning_predict(module, loader, execution, step, at_end)
    labels: dict = {}
    for _, part_labels in collected:
        labels |= part_labels
    results = sorted((result for result, _ in collected), key=lambda r: int(r.job[0]) if len(r.job) else -1)
    return results, labels
