"""Reading the results of ``perturb`` through one reader, in memory (the returned dict, ``.uns``) or in a store.

:class:`PerturbationResults` is the entry point that :func:`~scgeneformer.tl.perturbation_stats` and the ``sgf.pl``
plots read results through; :func:`read_perturbation_store` loads a store's whole table.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..._data._anndata import resolve_adata
from ._spec import GoalStates, genes_param_is_all
from ._store import PerturbationStore
from ._summaries import aggregate_gene_shifts_store

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData
    from mudata import MuData


class PerturbationResults:
    """The results of :func:`~scgeneformer.tl.perturb`, read the same way in memory or from a store.

    Parameters
    ----------
    data
        The AnnData (or MuData) holding the results in ``.uns[key]``, or the dict that
        :func:`~scgeneformer.tl.perturb` returned with ``inplace=False`` (or :func:`read_perturbation_store`).
    key
        The ``key_added`` of :func:`~scgeneformer.tl.perturb`.
    mod
        Modality used when ``data`` is a MuData.

    Attributes
    ----------
    results
        The results as stored: ``cells``, ``genes`` and ``params`` (with ``out=``: ``path``, ``genes``, ``params``
        and ``n_rows``), and the ``stats_<mode>`` tables of :func:`~scgeneformer.tl.perturbation_stats`.
    adata
        The AnnData the results were read from (``None`` for a dict).

    Examples
    --------
    >>> results = sgf.tl.PerturbationResults(adata)  # doctest: +SKIP
    >>> results.cell_rows().groupby("perturbed", observed=True)["cosine"].mean()  # doctest: +SKIP
    """

    def __init__(self, data: AnnData | MuData | dict, key: str = "geneformer_perturb", mod: str = "rna") -> None:
        self.adata: AnnData | None = None
        if isinstance(data, dict):
            if "cells" not in data and "path" not in data:
                msg = "Pass perturbation results: the dict returned by sgf.tl.perturb, or the AnnData holding them."
                raise ValueError(msg)
            self.results = data
            return
        adata = resolve_adata(data, mod)
        if key not in adata.uns or not ({"cells", "path"} & set(adata.uns[key])):
            msg = f"No perturbation results in .uns[{key!r}]; run sgf.tl.perturb(adata, model, ...) first."
            raise KeyError(msg)
        self.results, self.adata = adata.uns[key], adata

    @property
    def params(self) -> dict:
        """The run's parameters."""
        return dict(self.results.get("params", {}))

    @property
    def states(self) -> GoalStates | None:
        """The goal states of a goal-state run (``None`` without states)."""
        return GoalStates.from_params(self.params.get("states"))

    @property
    def genes_all(self) -> bool:
        """Whether every gene of each cell was perturbed (``genes="all"``)."""
        return genes_param_is_all(self.params)

    @property
    def store(self) -> PerturbationStore | None:
        """The store holding the table (``perturb(..., out=path)``), or ``None`` when the table is in memory."""
        if "cells" in self.results:
            return None
        store = PerturbationStore(self.results["path"])
        run = self.results.get("run")  # absent in results written before issue 20
        if run is not None and str(run) != store.run_id:
            msg = (
                f"The store at {store.path} holds another run than these results ({store.run_id} there, {run} "
                "recorded): the store was replaced or the path names another folder; read the right store with "
                "sgf.tl.read_perturbation_store(path)."
            )
            raise ValueError(msg)
        return store

    def cell_rows(self) -> pd.DataFrame:
        """The rows of whole cells (``affected == "cell"``).

        From a store only these rows are read, a part at a time: the gene rows of a large screen never are.
        """
        if "cells" in self.results:
            table = self.results["cells"]
            return table[table["affected"] == "cell"]
        return self.store.read(cell_rows=True)

    def gene_shifts(self) -> pd.DataFrame:
        """The cosines of the genes affected by each perturbation (``perturb(..., gene_shifts=True)``).

        In memory, every gene row of the table (one per cell, perturbation and remaining gene). From a store, each
        (perturbation, affected gene) pair's mean ``cosine`` over its cells, summed part by part so that the gene
        rows are never all in memory.
        """
        if "cells" in self.results:
            table = self.results["cells"]
            return table[table["affected"] != "cell"]
        genes = aggregate_gene_shifts_store(self.store)
        return genes[genes["affected_token"] != -1].rename(columns={"cosine_mean": "cosine"})

    def stats(self, mode: str) -> pd.DataFrame | None:
        """The table that :func:`~scgeneformer.tl.perturbation_stats` stored for ``mode`` (``None`` if none)."""
        return self.results.get(f"stats_{mode}")


def read_perturbation_store(path: str | os.PathLike) -> dict:
    """Results that :func:`~scgeneformer.tl.perturb` wrote to ``out=path``, as the dict it returns in memory.

    Parameters
    ----------
    path
        The store's folder.

    Returns
    -------
    ``{"cells": the whole table, "genes": the summary, "params": the run's parameters}``. The table of a large
    screen may not fit in memory: :func:`~scgeneformer.tl.perturbation_stats` reads stores part by part instead.

    Examples
    --------
    >>> sgf.tl.perturb(adata, model, "all", out="screen.parquet")  # doctest: +SKIP
    >>> results = sgf.tl.read_perturbation_store("screen.parquet")  # doctest: +SKIP
    """
    import pandas as pd

    store = PerturbationStore(path)
    summary_path = store.path / "summary.parquet"
    genes = pd.read_parquet(summary_path) if summary_path.is_file() else None
    params = {k: v for k, v in store.manifest["identity"].items() if k not in ("model_weights", "state_embeddings")}
    return {"cells": store.read(), "genes": genes, "params": params}
