"""Each cell's perturbations: its original sequence and every perturbed sequence, built from the run's spec."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ._edits import delete, gene_slice, mask, move_by, move_to_front, overexpress_set, overflow, truncate

if TYPE_CHECKING:
    from ..._data._encoding import EncodingInfo
    from ._spec import PerturbationSpec

SEQUENCE_BLOCK = 512  # cells whose token sequences are read from the rank layer at once


@dataclass
class CellJob:
    """All perturbations of one cell: its (possibly truncated) original sequence and each perturbed sequence."""

    cell: int
    original: np.ndarray
    perturbed: list[np.ndarray] = field(default_factory=list)
    #: per perturbed sequence: original position compared at each position, or ``_edits.NOT_COMPARED`` / ``ZERO``
    sources: list[np.ndarray] = field(default_factory=list)
    #: per perturbed sequence: the perturbed token ids (with an anchor: the anchor first)
    labels: list[tuple[int, ...]] = field(default_factory=list)
    #: when every perturbation deletes one gene: its position, per perturbed sequence (enables the shared first layer)
    deleted: list[int] | None = None

    def add(self, perturbed: np.ndarray, sources: np.ndarray, label: tuple[int, ...]) -> None:
        """Record one perturbed sequence, what each of its positions is compared with, and its perturbed tokens."""
        self.perturbed.append(perturbed)
        self.sources.append(sources)
        self.labels.append(label)


def iter_sequences(info: EncodingInfo, selected: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """Each selected cell and its token ids, in order; read ``SEQUENCE_BLOCK`` cells at a time."""
    for start in range(0, len(selected), SEQUENCE_BLOCK):
        block = selected[start : start + SEQUENCE_BLOCK]
        for cell, ids in zip(block, info.sequences(block), strict=True):
            yield int(cell), ids.astype(np.int64)


def iter_jobs(info: EncodingInfo, selected: np.ndarray, spec: PerturbationSpec, max_len: int) -> Iterator[CellJob]:
    """The job of each selected cell, in order."""
    for cell, ids in iter_sequences(info, selected):
        yield cell_job(cell, ids, spec, max_len, info.has_special_tokens, info.mask_id)


def gene_positions(length: int, special: bool) -> np.ndarray:
    """Positions of the gene tokens of a sequence of ``length`` tokens."""
    return np.arange(length)[gene_slice(length, special)]


@dataclass
class ScreenTargets:
    """What a two-stage screen perturbs in one cell, one entry per perturbation (the exact screen's order).

    ``original``: the sequence every perturbation is compared with; ``positions``: each perturbed gene's position in
    it (``-1``: a listed gene the cell lacks, inserted by overexpression); ``labels``: the perturbed token of each.
    """

    original: np.ndarray
    positions: np.ndarray
    labels: list[tuple[int, ...]]


def screen_targets(ids: np.ndarray, spec: PerturbationSpec, max_len: int, special: bool) -> ScreenTargets:
    """The single-gene perturbations of a two-stage screen of a cell with token ids ``ids``, in ``cell_job``'s order.

    Builds no perturbed sequence: stage 1 estimates them, stage 2 builds only its candidates (``targets_job``).
    """
    if spec.separately:
        original = separate_original(ids, spec, max_len, special)
        hits = [np.flatnonzero(original == t) for t in spec.tokens]
        if spec.perturbation == "overexpress":  # every listed gene: the absent ones are inserted
            listed = [(int(t), int(h[0]) if len(h) else -1) for t, h in zip(spec.tokens, hits, strict=True)]
        else:
            listed = [(int(t), int(h[0])) for t, h in zip(spec.tokens, hits, strict=True) if len(h)]
        positions = np.array([p for _, p in listed], dtype=np.int64)
        return ScreenTargets(original, positions, [(t,) for t, _ in listed])
    positions = gene_positions(len(ids), special)
    if spec.perturbation == "overexpress":
        positions = positions[1:]  # the top-ranked gene is already at the top
    return ScreenTargets(ids, positions, [(int(ids[p]),) for p in positions])


def targets_job(
    cell: int, targets: ScreenTargets, ks: np.ndarray, spec: PerturbationSpec, max_len: int, special: bool
) -> CellJob:
    """The perturbations ``ks`` (indices into ``targets``) of a cell, exactly as ``cell_job`` builds them.

    They run as plain forward passes (``deleted`` stays ``None``): the shared first layer pays off for a cell's
    contiguous deletions, but its windows span the whole cell for a few scattered ones, which then cost more (measured).
    """
    job = CellJob(cell, targets.original)
    for k in ks:
        label = targets.labels[k]
        job.add(*single_perturbation(targets.original, int(targets.positions[k]), label, spec, max_len, special), label)
    return job


def single_perturbation(
    ids: np.ndarray, position: int, label: tuple[int, ...], spec: PerturbationSpec, max_len: int, special: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The perturbed sequence and comparison sources of one gene (``position``; ``-1``: inserted), as ``cell_job``."""
    if spec.perturbation == "delete":
        return delete(ids, [position], special)
    if not spec.separately:
        return move_to_front(ids, [position], special)
    # moved, or inserted when the cell lacks it (the original already left room for one gene)
    _, perturbed, sources = overexpress_set(ids, label, max_len, special, reference_quirks=False)
    return perturbed, sources


def cell_job(
    cell: int, ids: np.ndarray, spec: PerturbationSpec, max_len: int, special: bool, mask_id: int = 1
) -> CellJob:
    """Every perturbation ``spec`` makes of the cell with token ids ``ids`` (of ``max_len`` tokens at most).

    ``mask_id`` is the ``<mask>`` token of ``perturbation="mask"``.
    """
    genes = np.arange(len(ids))[gene_slice(len(ids), special)]
    shift = spec.ranks_moved(len(genes)) if spec.moves_by_ranks else 0

    def edit(positions):
        if spec.perturbation == "delete":
            return delete(ids, positions, special)
        if spec.perturbation == "mask":
            return mask(ids, positions, mask_id, special)
        if spec.perturbation == "overexpress":
            return move_to_front(ids, positions, special)
        return move_by(ids, positions, shift, special)

    if spec.separately:
        return _separate_job(cell, ids, spec, max_len, special, edit)
    if spec.tokens is not None:
        if spec.perturbation == "overexpress":
            original, perturbed, sources = overexpress_set(
                ids, spec.tokens, max_len, special, reference_quirks=spec.reference_quirks
            )
            job = CellJob(cell, original)
            job.add(perturbed, sources, spec.tokens)
            return job
        job = CellJob(cell, ids)
        positions = [int(np.flatnonzero(ids == t)[0]) for t in spec.tokens]
        job.add(*edit(positions), spec.tokens)
        return job
    job = CellJob(cell, ids)
    if spec.anchor is not None:
        # the anchor alone, then each other gene alone and with the anchor: the parts of the combination statistics
        anchor_position = int(np.flatnonzero(ids == spec.anchor)[0])
        job.add(*edit([anchor_position]), (spec.anchor,))
        for position in genes:
            if position != anchor_position:
                job.add(*edit([int(position)]), (int(ids[position]),))
                job.add(*edit([anchor_position, int(position)]), (spec.anchor, int(ids[position])))
        return job
    if spec.perturbation == "overexpress":
        genes = genes[1:]  # the top-ranked gene is already at the top
    for position in genes:
        job.add(*edit([int(position)]), (int(ids[position]),))
    if spec.perturbation == "delete":
        job.deleted = [int(p) for p in genes]
    return job


def _separate_job(cell: int, ids: np.ndarray, spec: PerturbationSpec, max_len: int, special: bool, edit) -> CellJob:
    """``combine="separately"``: one perturbation per listed gene, all compared with one original of the cell.

    Genes the cell does not hold are skipped, but for overexpression, which inserts them. A cell at the input size
    then loses its last gene in the original too (as with a gene list), for every gene of the list: the original
    is shared, so that it runs once per cell.
    """
    if spec.perturbation != "overexpress":
        job = CellJob(cell, ids)
        for token in spec.tokens:
            hits = np.flatnonzero(ids == token)
            if len(hits):
                job.add(*edit([int(hits[0])]), (int(token),))
        return job
    base = separate_original(ids, spec, max_len, special)
    job = CellJob(cell, base)
    for token in spec.tokens:
        # base leaves room for one inserted gene: the original overexpress_set returns is base itself
        _, perturbed, sources = overexpress_set(base, (int(token),), max_len, special, reference_quirks=False)
        job.add(perturbed, sources, (int(token),))
    return job


def separate_original(ids: np.ndarray, spec: PerturbationSpec, max_len: int, special: bool) -> np.ndarray:
    """The original of ``combine="separately"``: the cell, less its last gene when overexpression must insert one.

    Inserting a listed gene the cell lacks into a cell at the input size pushes its last gene out; the original is
    shared by all the cell's perturbations (it runs once), so it leaves room for one inserted gene.
    """
    if spec.perturbation != "overexpress" or all((ids == t).any() for t in spec.tokens):
        return ids
    return truncate(ids, overflow(len(ids), 0, 1, max_len, reference_quirks=False), special)
