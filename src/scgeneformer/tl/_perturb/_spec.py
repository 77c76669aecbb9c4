"""Typed descriptions of an in silico perturbation run, shared by ``perturb``, its statistics and its plots."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..._data._anndata import writable_names

Perturbation = Literal["delete", "mask", "overexpress", "inhibit", "activate"]
PERTURBATIONS = ("delete", "mask", "overexpress", "inhibit", "activate")
Combine = Literal["together", "separately"]
COMBINE = ("together", "separately")


def _as_list(value) -> list:
    """A list from a list, tuple, array (as read back from h5ad/zarr), a single value or ``None``."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [v.item() if isinstance(v, np.generic) else v for v in np.asarray(value, dtype=object).ravel()]


@dataclass(frozen=True)
class GoalStates:
    """Goal-state mode of :func:`~scgeneformer.tl.perturb`: which cells are perturbed, and toward which states.

    Cells with ``obs[state_key] == start_state`` are perturbed; for the start, goal and each alternative state the
    shift ``cos(perturbed, state) - cos(original, state)`` is reported (positive: toward the state).

    Parameters
    ----------
    state_key
        ``.obs`` column of the states.
    start_state, goal_state
        The states perturbed from and toward.
    alt_states
        Further states to report shifts toward.

    Examples
    --------
    >>> GoalStates("condition", start_state="stim", goal_state="ctrl")
    GoalStates(state_key='condition', start_state='stim', goal_state='ctrl', alt_states=())
    >>> GoalStates.coerce({"state_key": "disease", "start_state": "dcm", "goal_state": "nf", "alt_states": ["hcm"]})
    GoalStates(state_key='disease', start_state='dcm', goal_state='nf', alt_states=('hcm',))
    """

    state_key: str
    start_state: Any
    goal_state: Any
    alt_states: tuple = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "alt_states", tuple(_as_list(self.alt_states)))
        if not isinstance(self.state_key, str) or not self.state_key:
            msg = f"state_key must name an .obs column, got {self.state_key!r}."
            raise ValueError(msg)
        names = self.names
        if any(name is None for name in names):
            msg = "Goal-state mode needs state_key, start_state and goal_state together."
            raise ValueError(msg)
        if len({str(n) for n in names}) != len(names):
            msg = f"start, goal and alternative states must all differ, got {names}."
            raise ValueError(msg)

    @property
    def names(self) -> list:
        """The states in reporting order: start, goal, alternatives."""
        return [self.start_state, self.goal_state, *self.alt_states]

    @property
    def keys(self) -> list[str]:
        """Each state's name as used in column names (``/`` replaced, see :func:`writable_names`)."""
        return writable_names(self.names)

    def column(self, state) -> str:
        """The results column holding the shifts toward ``state`` (``shift_<key>``)."""
        return f"shift_{self.keys[[str(n) for n in self.names].index(str(state))]}"

    @property
    def columns(self) -> list[str]:
        """The shift columns of all states, in reporting order."""
        return [f"shift_{key}" for key in self.keys]

    @classmethod
    def coerce(cls, value: GoalStates | Mapping | None) -> GoalStates | None:
        """From a :class:`GoalStates`, a mapping like the reference's ``cell_states_to_model``, or ``None``."""
        if value is None or isinstance(value, GoalStates):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - {"state_key", "start_state", "goal_state", "alt_states"}
            if unknown:
                msg = f"Unknown goal-state keys {sorted(unknown)}; use state_key, start_state, goal_state, alt_states."
                raise ValueError(msg)
            missing = {"state_key", "start_state", "goal_state"} - set(value)
            if missing:
                msg = f"Goal-state mode needs state_key, start_state and goal_state; missing {sorted(missing)}."
                raise ValueError(msg)
            return cls(value["state_key"], value["start_state"], value["goal_state"], value.get("alt_states") or ())
        msg = f"states must be an sgf.tl.GoalStates or a dict of its fields, got {type(value).__name__}."
        raise TypeError(msg)

    def to_params(self) -> dict:
        """Plain values to store with the results (survive ``write_h5ad`` and ``write_zarr``)."""
        return {
            "state_key": self.state_key,
            "start_state": self.start_state,
            "goal_state": self.goal_state,
            "alt_states": list(self.alt_states),
        }

    @classmethod
    def from_params(cls, params: Mapping | None) -> GoalStates | None:
        """Read :meth:`to_params` back, also after a ``write_h5ad``/``write_zarr`` round trip (``None``: no states)."""
        if not params:
            return None
        alt = params.get("alt_states")
        return cls(
            str(params["state_key"]), _scalar(params["start_state"]), _scalar(params["goal_state"]), _as_list(alt)
        )


def _scalar(value):
    return value.item() if isinstance(value, np.generic) else value


@dataclass(frozen=True)
class PerturbationSpec:
    """What each perturbation of a run does to a cell (see :func:`~scgeneformer.tl.perturb`).

    Attributes
    ----------
    perturbation
        ``"delete"``, ``"mask"``, ``"overexpress"``, ``"inhibit"`` or ``"activate"``.
    tokens
        Token ids perturbed together in every cell, or ``None`` for every gene of each cell, one at a time.
    anchor
        With ``tokens=None``: a token perturbed alone, together with each other gene (pairs), and each other gene
        alone (the three parts of the combination statistics).
    rank_shift
        Ranks moved by inhibit/activate (an int, or a fraction of the cell's genes).
    reference_quirks
        Reproduce the reference's overexpression bugs.
    separately
        With ``tokens``: perturb each token on its own (one perturbation per token a cell holds, or per token for
        overexpression) instead of all together.
    """

    perturbation: Perturbation = "delete"
    tokens: tuple[int, ...] | None = None
    anchor: int | None = None
    rank_shift: int | float = 0.25
    reference_quirks: bool = False
    separately: bool = False

    def __post_init__(self) -> None:
        if self.perturbation not in PERTURBATIONS:
            msg = f"perturbation must be one of {PERTURBATIONS}, got {self.perturbation!r}."
            raise ValueError(msg)
        if self.separately and self.tokens is None:
            msg = "combine='separately' perturbs each gene of a list on its own: pass a gene list, not genes='all'."
            raise ValueError(msg)
        if self.separately and self.reference_quirks:
            msg = "reference_quirks reproduces the reference, which has no combine='separately': use one or the other."
            raise ValueError(msg)
        if self.anchor is not None and self.tokens is not None:
            msg = "anchor_gene pairs the anchor with every gene of a cell: use it with genes='all'."
            raise ValueError(msg)
        if self.moves_by_ranks:
            shift = self.rank_shift
            fraction = isinstance(shift, float) and 0 < shift < 1
            if isinstance(shift, bool) or not (fraction or (float(shift) == int(shift) and shift >= 1)):
                msg = f"rank_shift must be a positive integer or a fraction in (0, 1), got {shift!r}."
                raise ValueError(msg)

    @property
    def moves_by_ranks(self) -> bool:
        """Whether genes move by ``rank_shift`` ranks (inhibit, activate)."""
        return self.perturbation in ("inhibit", "activate")

    @property
    def all_genes(self) -> bool:
        """Whether every gene of each cell is perturbed in turn."""
        return self.tokens is None

    @property
    def shifts_gene_labels(self) -> bool:
        """Whether gene-shift labels move by one gene, as in the reference (its overexpress-``"all"`` bug)."""
        return self.reference_quirks and self.all_genes and self.perturbation == "overexpress"

    def required_tokens(self) -> list[int]:
        """Tokens a cell must hold to be perturbed (inserted overexpressed genes need not be present)."""
        if self.anchor is not None:
            return [self.anchor]
        if self.tokens is not None and self.perturbation != "overexpress" and not self.separately:
            return list(self.tokens)
        return []

    def any_tokens(self) -> list[int]:
        """Tokens of which a cell must hold one to be perturbed (``separately``, but for overexpression)."""
        if self.separately and self.perturbation != "overexpress":
            return list(self.tokens)
        return []

    def ranks_moved(self, n_genes: int) -> int:
        """Signed rank shift for a cell of ``n_genes`` genes: positive moves down (inhibit), negative up."""
        shift = self.rank_shift
        steps = max(1, int(n_genes * shift)) if isinstance(shift, float) and 0 < shift < 1 else int(shift)
        return -steps if self.perturbation == "activate" else steps

    def count(self, lengths: np.ndarray, special: bool) -> int:
        """Number of perturbed sequences for cells of these lengths (with ``separately``: at most)."""
        if self.separately:
            return len(lengths) * len(self.tokens)
        if self.tokens is not None:
            return len(lengths)
        return int(self.perturbed_lengths(lengths, special)[0].sum())

    def perturbed_lengths(self, lengths: np.ndarray, special: bool) -> tuple[np.ndarray, np.ndarray]:
        """For ``genes="all"``: per cell, the number of perturbed sequences and the length of each.

        Every gene (but the anchor, or the top gene that overexpression cannot move up) is perturbed once; deleting
        removes it, masking or moving keeps the length. With an anchor, the anchor alone, each other gene alone and
        each pair are perturbed: deletions then have two lengths, and the length returned is their mean (a float),
        so that ``count * length`` is the exact number of perturbed tokens.
        """
        lengths = np.asarray(lengths, dtype=np.int64)
        genes = lengths - (2 if special else 0)
        if self.anchor is not None or self.perturbation == "overexpress":
            genes = np.maximum(genes - 1, 0)
        removed = 1 if self.perturbation == "delete" else 0
        if self.anchor is None:
            return genes, lengths - removed
        counts = 2 * genes + 1  # the anchor alone, then each gene alone and with the anchor
        tokens = (genes + 1) * (lengths - removed) + genes * (lengths - 2 * removed)
        return counts, tokens / counts if removed else lengths

    def to_params(self) -> dict:
        """Plain values to store with the results."""
        params: dict = {
            "genes": "all" if self.tokens is None else [int(t) for t in self.tokens],
            "perturbation": self.perturbation,
            "reference_quirks": self.reference_quirks,
        }
        if self.anchor is not None:
            params["anchor_token"] = int(self.anchor)
        if self.moves_by_ranks:
            params["rank_shift"] = self.rank_shift
        if self.separately:  # only then: the parameters (and store identities) of other runs stay as they were
            params["combine"] = "separately"
        return params


def genes_param_is_all(params: Mapping) -> bool:
    """Whether stored run parameters describe a ``genes="all"`` run (also after a file round trip)."""
    genes = params.get("genes", "all")
    return isinstance(genes, str) and genes == "all"
