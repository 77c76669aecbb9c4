"""How the genes of a dataset become vocabulary tokens: mapping, duplicate summing and tie order."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..vocabulary import Vocabulary


@dataclass(frozen=True, eq=False)
class GenePlan:
    """Maps the columns of a count matrix onto ranked units ("groups").

    A group is what gets one token in a cell: normally all columns mapping to the same token, summed. Groups are
    numbered in the order of their first column, so a CSR chunk re-indexed by group keeps sorted indices and ranks
    can be written back per column without sorting.

    Attributes
    ----------
    var_token
        Token id of each column (``-1`` if not in the vocabulary).
    var_group
        Group of each column (``-1`` if not in the vocabulary).
    group_token, group_median, group_var
        Per group: its token id, gene median and its first column (where its rank is stored).
    group_tie_key
        Per group: the order among exactly tied values (lower first).
    is_first_column
        Whether each column is the first column of its group (false for duplicates and unmapped columns).
    needs_sum
        Whether some group holds more than one column.
    """

    var_token: np.ndarray
    var_group: np.ndarray
    group_token: np.ndarray
    group_median: np.ndarray
    group_var: np.ndarray
    group_tie_key: np.ndarray
    is_first_column: np.ndarray
    needs_sum: bool

    @property
    def n_groups(self) -> int:
        return len(self.group_token)

    @cached_property
    def column_code(self) -> np.ndarray:
        """Per column: its group (first column of a group), ``-2 - group`` (other columns) or ``-1`` (unmapped).

        One lookup then classifies every stored entry of a chunk.
        """
        code = np.where(self.is_first_column, self.var_group, -2 - self.var_group)
        code[self.var_group < 0] = -1
        return code

    @classmethod
    def build(cls, gene_ids, vocabulary: Vocabulary, *, reference_quirks: bool = False) -> GenePlan:
        """Plan for the identifiers ``gene_ids`` of a dataset's columns.

        By default every column mapping to one token is summed and ties are broken by token id (so the result does
        not depend on column order). With ``reference_quirks`` the reference tokenizer is reproduced: its identifier
        mapping, its decision to sum duplicates only when its collapse check triggers (never in V1), and its column
        order for ties (unsummed columns first, then summed genes in order of first appearance).
        """
        if reference_quirks:
            var_token, collapse = vocabulary.map_gene_ids_reference(gene_ids)
        else:
            var_token, collapse = vocabulary.map_gene_ids(gene_ids), True
        mapped = np.flatnonzero(var_token >= 0)
        tokens = var_token[mapped]
        if collapse:
            # One group per token; np.unique numbers tokens by value, renumber them by first column.
            unique_tokens, first, inverse = np.unique(tokens, return_index=True, return_inverse=True)
            by_first_column = np.argsort(first, kind="stable")
            renumber = np.empty_like(by_first_column)
            renumber[by_first_column] = np.arange(len(by_first_column))
            group_of_mapped = renumber[inverse]
            group_token = unique_tokens[by_first_column]
        else:
            # Reference without collapsing: every column is its own unit, even duplicated tokens.
            group_of_mapped, group_token = np.arange(len(mapped)), tokens
        group_var = np.full(len(group_token), len(var_token), dtype=np.int64)
        np.minimum.at(group_var, group_of_mapped, mapped)
        var_group = np.full(len(var_token), -1, dtype=np.int64)
        var_group[mapped] = group_of_mapped
        is_first_column = np.zeros(len(var_token), dtype=bool)
        is_first_column[group_var] = True
        if not reference_quirks:
            tie_key = group_token.astype(np.int64)
        elif not collapse:
            tie_key = np.arange(len(group_token))
        else:
            size = Counter(group_of_mapped.tolist())
            is_dup = np.fromiter((size[g] > 1 for g in range(len(group_token))), dtype=bool, count=len(group_token))
            # Reference column order after collapsing: unsummed genes in place, summed ones appended.
            tie_key = np.argsort(np.argsort(is_dup, kind="stable"), kind="stable")
        return cls(
            var_token=var_token,
            var_group=var_group,
            group_token=np.asarray(group_token, dtype=np.int32),
            group_median=vocabulary.token_medians[group_token],
            group_var=group_var,
            group_tie_key=tie_key,
            is_first_column=is_first_column,
            needs_sum=len(group_token) < len(mapped),
        )
