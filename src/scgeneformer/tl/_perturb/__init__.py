"""In silico perturbation: :func:`perturb`, its results (in memory or in a store), their statistics.

Modules, one job each:

- ``_orchestration``: :func:`perturb`, a short sequence of the steps below;
- ``_spec``: typed descriptions of a run (:class:`GoalStates`, ``PerturbationSpec``);
- ``_selection``: the vocabulary, the perturbed genes, the goal states and the cells of a run;
- ``_edits``: token-sequence edits (delete, move, insert) and what each perturbed position is compared with;
- ``_jobs``: each cell's perturbed sequences;
- ``_planning``: parts of a screen, their cost, and their sharing between processes;
- ``_running`` / ``_distributed``: running the parts in this process / over Lightning processes;
- ``_engine`` (with ``_first_layer``): batched forward passes and comparisons of one part;
- ``_estimate`` / ``_two_stage``: two-stage screens (stage-1 estimates of every deletion, exact confirmations);
- ``_preview``: what a run will cost (``dry_run``) and the size check of in-memory results;
- ``_tables`` / ``_summaries``: the result table and its summaries, in memory or from a store;
- ``_store``: :class:`PerturbationStore`, results on disk, resumable;
- ``_results``: :class:`PerturbationResults`, the one reader of results (used by the statistics and ``sgf.pl``);
- ``_stats``: :func:`perturbation_stats`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..._utils._lazy import lazy_exports

if TYPE_CHECKING:
    from ._orchestration import perturb
    from ._results import PerturbationResults, read_perturbation_store
    from ._spec import GoalStates
    from ._stats import perturbation_stats
    from ._store import PerturbationStore

__all__ = [
    "GoalStates",
    "PerturbationResults",
    "PerturbationStore",
    "perturb",
    "perturbation_stats",
    "read_perturbation_store",
]

# Imported on first use: reading results and their statistics (``scgeneformer stats``) needs no torch, running does.
_LAZY = {
    "perturb": "._orchestration",
    "PerturbationResults": "._results",
    "read_perturbation_store": "._results",
    "GoalStates": "._spec",
    "perturbation_stats": "._stats",
    "PerturbationStore": "._store",
}


__getattr__, __dir__ = lazy_exports(globals(), _LAZY)
