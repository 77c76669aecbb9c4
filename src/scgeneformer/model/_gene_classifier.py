"""Gene-classification fine-tuning: gene labels mapped to tokens, the cells that hold them, and the label lookup."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._data._encoding import EncodingInfo
from .._settings import logger
from .._utils._text import counted
from ..vocabulary import normalize_gene_id


@dataclass
class GeneLabels:
    """Labelled genes of an encoded AnnData, one entry per token.

    Attributes
    ----------
    classes
        Class names, sorted.
    tokens
        Token ids of the labelled genes that occur in at least one encoded cell.
    codes
        Class code (position in ``classes``) of each token.
    names
        A gene name of each token (the first matching ``var_name``).
    var
        Position in ``.var`` of that gene.

    Examples
    --------
    >>> info = sgf.EncodingInfo(adata)  # doctest: +SKIP
    >>> labels = sgf.model.GeneLabels.resolve(info, {"a": ["GATA4"], "b": ["CEBPZ"]})  # doctest: +SKIP
    >>> model.train_gene_classifier(labels.subset([0, 1]))  # doctest: +SKIP
    """

    classes: list[str]
    tokens: np.ndarray
    codes: np.ndarray
    names: np.ndarray
    var: np.ndarray

    @classmethod
    def resolve(cls, info: EncodingInfo, gene_labels: Mapping[str, object] | str) -> GeneLabels:
        """Map ``{class: [genes]}`` or a ``.var`` column of classes to the tokens of an encoded AnnData.

        See :func:`resolve_gene_labels`.
        """
        return resolve_gene_labels(info, gene_labels)

    def subset(self, positions) -> GeneLabels:
        """The labels of the genes at ``positions`` (classes unchanged)."""
        positions = np.asarray(positions)
        return GeneLabels(
            self.classes, self.tokens[positions], self.codes[positions], self.names[positions], self.var[positions]
        )

    def lookup(self, vocab_size: int) -> np.ndarray:
        """Class code of every token id (-100: unlabelled)."""
        table = np.full(vocab_size, -100, dtype=np.int64)
        table[self.tokens] = self.codes
        return table


def _normalise(identifiers) -> np.ndarray:
    return np.asarray([normalize_gene_id(identifier) for identifier in identifiers], dtype=object)


def resolve_gene_labels(info: EncodingInfo, gene_labels: Mapping[str, object] | str) -> GeneLabels:
    """Map gene labels to the tokens of an encoded AnnData.

    Parameters
    ----------
    info
        The encoded data.
    gene_labels
        ``{class: [genes]}`` with genes named as in ``var_names`` or in the ``.var`` column of identifiers used by
        :func:`~scgeneformer.pp.rank_encode` (``gene_id_key``), Ensembl IDs with or without version suffix, in any
        case; or the name of a ``.var`` column of classes (missing values: unlabelled genes).

    Returns
    -------
    The labelled genes that occur in encoded cells, with their classes.
    """
    adata = info.adata
    var_token = info.var_token
    if isinstance(gene_labels, str):
        if gene_labels not in adata.var.columns:
            msg = f"gene_labels {gene_labels!r} is neither a .var column nor a {{class: [genes]}} dict."
            raise KeyError(msg)
        values = pd.Series(adata.var[gene_labels].to_numpy(dtype=object))
        labelled = values.notna().to_numpy() & (var_token >= 0)
        pairs = pd.DataFrame(
            {
                "token": var_token[labelled],
                "class": values[labelled].astype(str).to_numpy(),
                "var": np.flatnonzero(labelled),
            }
        )
        source = f"var[{gene_labels!r}]"
    elif isinstance(gene_labels, Mapping):
        pairs = _pairs_from_dict(info, gene_labels)
        source = "gene_labels"
    else:
        msg = f"gene_labels must be a {{class: [genes]}} dict or a .var column name, got {type(gene_labels).__name__}."
        raise TypeError(msg)

    present = np.zeros(int(var_token.max(initial=-1)) + 1, dtype=bool)
    present[var_token[(info.var_occurrence() > 0) & (var_token >= 0)]] = True
    pairs = pairs[present[pairs["token"].to_numpy()]] if len(pairs) else pairs
    pairs = pairs.drop_duplicates(["token", "class"])
    conflicting = pairs["token"][pairs["token"].duplicated()].unique()
    if len(conflicting):
        names = adata.var_names[pairs.loc[pairs["token"].isin(conflicting), "var"].to_numpy()].unique()[:5]
        msg = f"Genes labelled with more than one class in {source}: {', '.join(map(str, names))}."
        raise ValueError(msg)
    if pairs.empty:
        msg = (
            f"None of the genes labelled in {source} occurs in the encoded cells (genes are matched to var_names or "
            "to the gene_id_key column used by `sgf.pp.rank_encode`, and must be in the model's vocabulary)."
        )
        raise ValueError(msg)
    classes = sorted(pairs["class"].unique())
    if len(classes) < 2:
        msg = f"Gene classification needs at least two classes among the labelled genes in the data, found {classes}."
        raise ValueError(msg)
    pairs = pairs.sort_values("token")
    codes = pd.Categorical(pairs["class"], categories=classes).codes.astype(np.int64)
    counts = ", ".join(f"{c}: {int((codes == i).sum())}" for i, c in enumerate(classes))
    logger.info("Gene labels: %s in the encoded cells (%s).", counted(len(pairs), "gene"), counts)
    return GeneLabels(
        classes=classes,
        tokens=pairs["token"].to_numpy(dtype=np.int64),
        codes=codes,
        names=adata.var_names[pairs["var"].to_numpy()].to_numpy(dtype=object),
        var=pairs["var"].to_numpy(dtype=np.int64),
    )


def _pairs_from_dict(info: EncodingInfo, gene_labels: Mapping[str, object]) -> pd.DataFrame:
    adata = info.adata
    var_token = info.var_token
    keys = [_normalise(adata.var_names)]
    id_key = info.params.get("gene_id_key", "var_names")
    if id_key != "var_names" and id_key in adata.var.columns:
        keys.append(_normalise(adata.var[id_key].to_numpy(dtype=object)))
    n_vars = adata.n_vars
    index = pd.DataFrame({"name": np.concatenate(keys), "var": np.tile(np.arange(n_vars), len(keys))}).drop_duplicates()
    index = index[(var_token[index["var"].to_numpy()] >= 0) & index["name"].notna().to_numpy()]
    rows = []
    for label, genes in gene_labels.items():
        if isinstance(genes, str) or not hasattr(genes, "__iter__"):
            msg = f"gene_labels[{label!r}] must be a list of genes, got {type(genes).__name__}."
            raise TypeError(msg)
        rows.append(pd.DataFrame({"name": _normalise(list(genes)), "class": str(label)}))
    wanted = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame({"name": [], "class": []})
    matched = wanted.merge(index, on="name", how="left")
    n_missing = int(matched.drop_duplicates("name")["var"].isna().sum())
    if n_missing:
        logger.info("%d labelled genes are not in the data's vocabulary genes and are left out.", n_missing)
    matched = matched.dropna(subset=["var"])
    var = matched["var"].to_numpy(dtype=np.int64)
    return pd.DataFrame({"token": var_token[var], "class": matched["class"].to_numpy(dtype=object), "var": var})
