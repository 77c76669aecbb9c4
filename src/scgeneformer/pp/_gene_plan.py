"""How the genes of a dataset become vocabulary tokens: mapping, duplicate summing and tie order."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from ..vocabulary import Vocabulary


@dataclass(frozen=True)
class GenePlan:
    """Maps the columns of a count matrix onto ranked units ("groups").

    A group is what gets one token in a cell: normally all columns mapping to the same token, summed. Groups are
    numbered in tie-break order: when two groups of a cell have exactly equal normalized values, the one with the
    lower number is ranked first.

    Attributes
    ----------
    var_token
        Token id of each column (``-1`` if not in the vocabulary).
    var_group
        Group of each column (``-1`` if not in the vocabulary).
    group_token, group_median, group_var
        Per group: its token id, gene median and the first column holding it (where its rank is stored).
    needs_sum
        Whether some group holds more than one column.
    """

    var_token: np.ndarray
    var_group: np.ndarray
    group_token: np.ndarray
    group_median: np.ndarray
    group_var: np.ndarray
    needs_sum: bool

    @property
    def n_groups(self) -> int:
        return len(self.group_token)

    @classmethod
    def build(cls, gene_ids, vocabulary: Vocabulary, *, reference_quirks: bool = False) -> GenePlan:
        """Plan for the identifiers ``gene_ids`` of a dataset's columns.

        By default every column mapping to one token is summed and ties are broken by token id (so the result does
        not depend on column order). With ``reference_quirks`` the reference tokenizer is reproduced: its identifier
        mapping, its decision to sum duplicates only when the collapse branch triggers (never in V1), and its column
        order (unsummed columns first, then summed groups in order of first appearance).
        """
        if reference_quirks:
            var_token, collapse = vocabulary.map_gene_ids_reference(gene_ids)
        else:
            var_token, collapse = vocabulary.map_gene_ids(gene_ids), True
        mapped = np.flatnonzero(var_token >= 0)
        tokens = var_token[mapped]
        if not reference_quirks:
            # One group per token, numbered by token id.
            group_token, group_of_mapped = np.unique(tokens, return_inverse=True)
        elif not collapse:
            # Reference without collapsing: every column is its own unit, even duplicated tokens.
            group_token, group_of_mapped = tokens, np.arange(len(mapped))
        else:
            counts = Counter(tokens.tolist())
            singles = [t for t in tokens.tolist() if counts[t] == 1]
            dups = list(dict.fromkeys(t for t in tokens.tolist() if counts[t] > 1))
            group_token = np.asarray(singles + dups, dtype=np.int32)
            position = {t: i for i, t in enumerate(group_token.tolist())}
            group_of_mapped = np.fromiter((position[t] for t in tokens.tolist()), dtype=np.int64, count=len(tokens))
        var_group = np.full(len(var_token), -1, dtype=np.int32)
        var_group[mapped] = group_of_mapped
        group_var = np.full(len(group_token), len(var_token), dtype=np.int64)
        np.minimum.at(group_var, group_of_mapped, mapped)
        return cls(
            var_token=var_token,
            var_group=var_group,
            group_token=np.asarray(group_token, dtype=np.int32),
            group_median=vocabulary.token_medians[group_token],
            group_var=group_var,
            needs_sum=len(group_token) < len(mapped),
        )
