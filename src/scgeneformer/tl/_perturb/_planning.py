"""Planning a screen: the selected cells cut into parts, each part's cost, and the parts shared out by cost.

A part is the unit that runs through the engine as one chunk, that a process of a distributed run takes, and that a
store writes and resumes as one. Parts follow the processing order (longest cells first), so a part's results do not
depend on how many processes run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ._jobs import iter_jobs

if TYPE_CHECKING:
    from ..._data._encoding import EncodingInfo
    from ._spec import PerturbationSpec

#: Perturbed tokens per part (whole cells; at least one): bounds the memory of the engine's bank of originals and of
#: pending results, and sets how finely a screen is shared out, stored and resumed. Results depend on it only through
#: float rounding.
CHUNK_TOKENS = 1_000_000


class Plan(NamedTuple):
    """Groups of cells (positions in ``selected``, contiguous) that run and are stored together."""

    parts: list[np.ndarray]
    #: model FLOPs of each part's perturbed sequences (how parts are shared out between processes)
    cost: np.ndarray
    n_perturbations: np.ndarray


def plan_parts(info: EncodingInfo, selected: np.ndarray, spec: PerturbationSpec, max_len: int, config) -> Plan:
    """Cut the selected cells into parts of about ``CHUNK_TOKENS`` perturbed tokens, in processing order.

    These are the chunks the engine runs (so a part's results do not depend on how many processes run), costed by
    the encoder's FLOPs on each perturbed sequence, whose attention grows with the square of its length.
    """
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
        for j, job in enumerate(iter_jobs(info, selected, spec, max_len)):
            lengths = np.array([len(p) for p in job.perturbed], dtype=np.float64)
            tokens[j], counts[j] = lengths.sum(), len(lengths)
            cost[j] = (lengths * (8 * d + 4 * f + 4 * lengths)).sum() * d
    parts, start, running = [], 0, 0
    for j in range(len(selected)):
        running += tokens[j]
        if running >= CHUNK_TOKENS:
            parts.append(np.arange(start, j + 1))
            start, running = j + 1, 0
    if start < len(selected):
        parts.append(np.arange(start, len(selected)))
    return Plan(
        parts,
        np.array([cost[p].sum() for p in parts]),
        np.array([counts[p].sum() for p in parts], dtype=np.int64),
    )


def share_by_cost(cost: np.ndarray, n_workers: int) -> list[list[int]]:
    """Longest-processing-time-first assignment of items with ``cost`` to ``n_workers`` (each list in item order)."""
    loads = np.zeros(n_workers)
    assigned: list[list[int]] = [[] for _ in range(n_workers)]
    for item in np.argsort(-np.asarray(cost), kind="stable"):
        worker = int(np.argmin(loads))
        assigned[worker].append(int(item))
        loads[worker] += cost[item]
    return [sorted(items) for items in assigned]
