"""The result table of a perturbation run: one row per (cell, perturbation), and one per remaining gene if asked.

The engine returns flat arrays per part (job, perturbation, cosine, shifts, gene cosines); here they become the
table that :func:`~scgeneformer.tl.perturb` returns or writes to its store, with names for cells and genes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ._summaries import summarize

if TYPE_CHECKING:
    import pandas as pd

    from ...vocabulary import Vocabulary
    from ._engine import ChunkResult


class ResultTables:
    """Makes result tables from the engine's results of some parts of a run.

    Parameters
    ----------
    obs_names
        Names of all cells of the data.
    selected
        Positions of the perturbed cells, in processing order (the engine's job indices point into it).
    vocab
        The vocabulary that names the perturbed and affected genes.
    state_columns
        Shift columns of goal-state mode (``[]`` without states).
    shift_labels
        Reproduce the reference's overexpress-``"all"`` bug: each gene shift is filed under the next gene.
    anchor
        The anchor token of an ``anchor_gene`` run: rows then get a ``combination`` column (``"anchor"``,
        ``"gene"`` or ``"anchor+gene"``).
    min_cells
        The summary leaves out perturbations of fewer cells.
    """

    def __init__(
        self,
        obs_names: np.ndarray,
        selected: np.ndarray,
        vocab: Vocabulary,
        state_columns: Sequence[str],
        *,
        shift_labels: bool,
        anchor: int | None = None,
        min_cells: int = 1,
    ) -> None:
        self.obs_names, self.selected, self.vocab = obs_names, selected, vocab
        self.state_columns, self.shift_labels = list(state_columns), shift_labels
        self.anchor, self.min_cells = anchor, min_cells

    def in_memory(self, results: list[ChunkResult], labels: dict) -> dict[str, pd.DataFrame]:
        """``{"cells": the table, "genes": its per-perturbation summary}`` of a whole run."""
        table, cell_rows = self._build(results, labels)
        return {"cells": table, "genes": summarize(cell_rows, self.state_columns, min_cells=self.min_cells)}

    def table(self, results: list[ChunkResult], labels: dict) -> pd.DataFrame:
        """The table of some parts (e.g. one part, written to a store)."""
        return self._build(results, labels)[0]

    def _build(self, results: list[ChunkResult], labels: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The whole table, and its cell rows alone; ``labels`` maps each job index to its perturbed tokens."""
        import pandas as pd

        obs_names, selected = self.obs_names, self.selected
        job = np.concatenate([r.job for r in results]) if results else np.empty(0, dtype=np.int64)
        k = np.concatenate([r.perturbation for r in results]) if results else np.empty(0, dtype=np.int64)
        order = np.lexsort((k, job))
        job, k = job[order], k[order]
        cosine = np.concatenate([r.cosine for r in results])[order] if results else np.empty(0, dtype=np.float32)
        shifts = None
        if self.state_columns:
            shifts = np.concatenate([r.shifts for r in results])[order]

        # perturbation labels → codes of unique labels
        unique_labels: dict[tuple[int, ...], int] = {}
        label_code = np.array(
            [unique_labels.setdefault(labels[j][kk], len(unique_labels)) for j, kk in zip(job, k, strict=True)],
            dtype=np.int64,
        )
        label_list = list(unique_labels)
        symbols = self.vocab.id_to_symbol
        gene_ids = self.vocab.id_to_gene
        perturbed = ["+".join(str(symbols[t]) for t in lab) for lab in label_list]
        perturbed_id = ["+".join(str(gene_ids[t]) for t in lab) for lab in label_list]
        perturbed_token = [",".join(str(t) for t in lab) for lab in label_list]

        def categorical(values: list[str], codes: np.ndarray):
            categories, inverse = np.unique(np.asarray(values, dtype=object), return_inverse=True)
            return pd.Categorical.from_codes(inverse[codes], categories=categories)

        cell_rows = pd.DataFrame(
            {
                "cell": pd.Categorical(obs_names[selected[job]], categories=pd.unique(obs_names[selected])),
                "perturbed": categorical(perturbed, label_code),
                "perturbed_id": categorical(perturbed_id, label_code),
                "perturbed_token": categorical(perturbed_token, label_code),
                "affected": "cell",
                "affected_id": "",
                "affected_token": np.full(len(job), -1, dtype=np.int32),
                "cosine": cosine,
            }
        )
        kind = None  # per label: its code in COMBINATIONS (anchor runs)
        if self.anchor is not None:
            kind = np.array([COMBINATIONS.index(combination_of(lab, self.anchor)) for lab in label_list], dtype=int)
            combinations = pd.Categorical.from_codes(kind[label_code], categories=COMBINATIONS)
            cell_rows.insert(cell_rows.columns.get_loc("perturbed_token") + 1, "combination", combinations)
        for i, column in enumerate(self.state_columns):
            cell_rows[column] = shifts[:, i]
        two_stage = bool(results) and results[0].confirmed is not None
        if two_stage:  # exact rows, and the rest: stage-1 estimates
            cell_rows["confirmed"] = np.concatenate([r.confirmed for r in results])[order]

        table = cell_rows
        gene_results = [r for r in results if r.gene_job is not None]
        if gene_results:
            g_job = np.concatenate([r.gene_job for r in gene_results])
            g_k = np.concatenate([r.gene_perturbation for r in gene_results])
            g_pos = np.concatenate([r.gene_position for r in gene_results])
            g_token = np.concatenate([r.gene_token for r in gene_results])
            g_cos = np.concatenate([r.gene_cosine for r in gene_results])
            g_order = np.lexsort((g_pos, g_k, g_job))
            g_job, g_k, g_token, g_cos = g_job[g_order], g_k[g_order], g_token[g_order], g_cos[g_order]
            if self.shift_labels:
                # The reference's overexpress-"all" bug: each value is filed under the next gene; the last is lost.
                same_next = np.r_[(g_job[1:] == g_job[:-1]) & (g_k[1:] == g_k[:-1]), False]
                g_token = np.r_[g_token[1:], -1][same_next]
                g_job, g_k, g_cos = g_job[same_next], g_k[same_next], g_cos[same_next]
            # every gene row's perturbation has a cell row; cell rows are sorted by (job, perturbation)
            stride = max(k.max(initial=0), g_k.max(initial=0)) + 1
            cell_keys, gene_keys = job * stride + k, g_job * stride + g_k
            g_code = label_code[np.searchsorted(cell_keys, gene_keys)]
            gene_rows = pd.DataFrame(
                {
                    "cell": pd.Categorical(obs_names[selected[g_job]], categories=cell_rows["cell"].cat.categories),
                    "perturbed": categorical(perturbed, g_code),
                    "perturbed_id": categorical(perturbed_id, g_code),
                    "perturbed_token": categorical(perturbed_token, g_code),
                    **({} if kind is None else {"combination": pd.Categorical.from_codes(kind[g_code], COMBINATIONS)}),
                    "affected": pd.Categorical(symbols[g_token].astype(str)),
                    "affected_id": pd.Categorical(gene_ids[g_token].astype(str)),
                    "affected_token": g_token.astype(np.int32),
                    "cosine": g_cos,
                }
            )
            for column in self.state_columns:
                gene_rows[column] = np.float32(np.nan)
            if two_stage:
                gene_rows["confirmed"] = True  # gene shifts come from exact runs only
            # each perturbation's cell row, then its gene rows
            keys = np.r_[cell_keys, gene_keys]
            table = pd.concat([cell_rows, gene_rows], ignore_index=True)
            for column in ("cell", "perturbed", "perturbed_id", "perturbed_token", "affected", "affected_id"):
                table[column] = table[column].astype("category")
            table = table.iloc[np.argsort(keys, kind="stable")].reset_index(drop=True)
        return table, cell_rows


#: Values of the ``combination`` column of an ``anchor_gene`` run.
COMBINATIONS = ("anchor", "gene", "anchor+gene")


def combination_of(label: tuple[int, ...], anchor: int) -> str:
    """Which part of an anchor run a perturbation's tokens are: the anchor alone, a gene alone, or both."""
    if anchor not in label:
        return "gene"
    return "anchor" if len(label) == 1 else "anchor+gene"
