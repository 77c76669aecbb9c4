"""``sgf.tl.benchmark_embeddings``: whether Geneformer's embedding beats the usual baselines on labelled data.

Embeddings are scored with the scverse metrics library scib-metrics (its ``Benchmarker``: bio conservation, and batch
correction given a batch key) next to the standard baseline, the PCA of log-normalised highly variable genes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .._data._anndata import resolve_adata
from .._utils._text import counted

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData
    from mudata import MuData

#: Name of the computed baseline in the results (and of its ``.obsm`` key with ``key_added``-independent naming).
BASELINE = "X_pca_hvg"
#: scib-metrics' neighbourhood metrics use up to 90 nearest neighbours of each cell.
MIN_CELLS = 100
#: Up to this many cells, neighbours are found exactly (scikit-learn); above, approximately (pynndescent).
EXACT_NEIGHBORS_MAX_CELLS = 50_000


def _exact_neighbors(n_jobs: int):
    """A scib-metrics neighbour computer: exact nearest neighbours (each cell its own first), deterministic."""

    def compute(X: np.ndarray, n_neighbors: int):
        from scib_metrics.nearest_neighbors import NeighborsResults
        from sklearn.neighbors import NearestNeighbors

        distances, indices = NearestNeighbors(n_neighbors=n_neighbors, n_jobs=n_jobs).fit(X).kneighbors(X)
        return NeighborsResults(indices=indices, distances=distances)

    return compute


def benchmark_embeddings(
    data: AnnData | MuData,
    label_key: str,
    *,
    batch_key: str | None = None,
    embeddings: str | Sequence[str] = ("X_geneformer",),
    baseline: bool = True,
    layer: str | None = None,
    n_top_genes: int = 2000,
    n_comps: int = 50,
    seed: int = 0,
    n_jobs: int = 1,
    key_added: str = "geneformer_benchmark",
    mod: str = "rna",
    inplace: bool = True,
) -> pd.DataFrame | None:
    """Score embeddings against the PCA baseline with scib-metrics: whether Geneformer's representation helps.

    Each embedding in ``.obsm`` (by default ``X_geneformer`` from :func:`~scgeneformer.tl.embed`; add others, e.g.
    ``"X_scVI"``) and, with ``baseline``, the PCA of log-normalised highly variable genes (scanpy's standard:
    ``normalize_total`` to 10,000 counts, ``log1p``, ``highly_variable_genes(flavor="seurat")``, ``pca``, computed
    here from the raw counts, as ``"X_pca_hvg"``) are scored by :class:`scib_metrics.benchmark.Benchmarker` with its
    default metrics, on the same cells:

    - bio conservation (how well the embedding keeps the ``label_key`` labels apart): isolated labels, KMeans NMI and
      ARI, silhouette of labels, cLISI;
    - with ``batch_key``, batch correction (how well batches mix within labels): BRAS, iLISI, kBET, graph
      connectivity, PCR comparison (against the PCA baseline, computed for it also without ``baseline``);
    - aggregate scores: the mean of each group and, with both, ``Total`` = 0.4 × batch correction + 0.6 × bio
      conservation (scIB's weighting). Higher is better; the metrics lie in [0, 1] (ARI can be slightly below 0, and
      the baseline's PCR comparison, against itself, is 0 by definition).

    Cells without a label (or batch), or with a non-finite value in any embedding (e.g. cells that were not
    encoded), are left out. Neighbours are exact (scikit-learn) up to 50,000 cells, else pynndescent's. The data are
    not modified except for ``.uns[key_added]``. Needs the ``evaluation`` extra
    (``pip install 'scgeneformer[evaluation]'``); importing scib-metrics (JAX) and compiling its metrics take some
    seconds to a minute on the first call of a session.

    Parameters
    ----------
    data
        AnnData (or MuData) with the embeddings in ``.obsm``, the labels and, for the baseline, raw counts.
    label_key
        ``.obs`` column of the cell labels (e.g. cell types).
    batch_key
        ``.obs`` column of batches (e.g. donors, chemistries): also score batch correction.
    embeddings
        ``.obsm`` key(s) of the embeddings to score.
    baseline
        Also score the PCA of log-normalised highly variable genes (``"X_pca_hvg"``).
    layer
        Layer with the raw counts (default: ``X``).
    n_top_genes, n_comps
        Number of highly variable genes and of principal components of the baseline.
    seed
        Seed of the PCA.
    n_jobs
        Processes for the neighbour search.
    key_added
        Key of the results in ``.uns``.
    mod
        Modality used when ``data`` is a MuData.
    inplace
        Store the results in ``.uns[key_added]`` and return ``None``, or return the table.

    Returns
    -------
    With ``inplace=False``, a tidy table, one row per embedding and metric: ``embedding`` (the ``.obsm`` key, or
    ``"X_pca_hvg"``), ``metric`` (scib-metrics' names, e.g. ``"Silhouette label"``, and the aggregate scores
    ``"Bio conservation"``, ``"Batch correction"``, ``"Total"``), ``metric_type`` (``"Bio conservation"``,
    ``"Batch correction"`` or ``"Aggregate score"``) and ``value``. Otherwise ``None``, with
    ``.uns[key_added]`` = ``{"metrics": that table, "params": {...}}`` (the keys, ``n_cells``, ``n_labels``,
    ``n_batches``, the baseline's settings and the scib-metrics version); it is written to h5ad and zarr files.
    Plot it with :func:`scgeneformer.pl.benchmark_embeddings`; the usual wide table is
    ``table.pivot(index="embedding", columns="metric", values="value")``.

    Examples
    --------
    >>> sgf.tl.embed(adata, model)  # doctest: +SKIP
    >>> embeddings = ["X_geneformer", "X_scVI"]
    >>> sgf.tl.benchmark_embeddings(adata, "cell_type", batch_key="donor", embeddings=embeddings)  # doctest: +SKIP
    >>> sgf.pl.benchmark_embeddings(adata)  # doctest: +SKIP
    """
    import anndata as ad
    import pandas as pd

    from .._settings import settings
    from .._utils._optional import require
    from ._baselines import hvg_pca, log_normalized

    adata = resolve_adata(data, mod)
    keys = [embeddings] if isinstance(embeddings, str) else list(embeddings)
    for key, what in ((label_key, "label_key"), (batch_key, "batch_key")):
        if key is not None and key not in adata.obs.columns:
            msg = f"{what} {key!r} is not an .obs column; available: {list(adata.obs.columns)}."
            raise KeyError(msg)
    if len(set(keys)) != len(keys) or (baseline and BASELINE in keys):
        msg = f"embeddings must be different from each other and from the baseline's name {BASELINE!r}; got {keys}."
        raise ValueError(msg)
    missing = [k for k in keys if k not in adata.obsm]
    if missing:
        hint = " (compute it with sgf.tl.embed)" if "X_geneformer" in missing else ""
        msg = f"embeddings {missing} are not in .obsm{hint}; available: {list(adata.obsm)}."
        raise KeyError(msg)
    if not keys and not baseline:
        msg = "Nothing to score: name embeddings or keep baseline=True."
        raise ValueError(msg)
    if layer is not None and layer not in adata.layers:
        msg = f"layer {layer!r} is not in .layers; available: {list(adata.layers)}."
        raise KeyError(msg)

    keep = adata.obs[label_key].notna().to_numpy()
    if batch_key is not None:
        keep &= adata.obs[batch_key].notna().to_numpy()
    for key in keys:
        values = np.asarray(adata.obsm[key])
        if values.ndim != 2 or values.shape[0] != adata.n_obs:
            msg = f"obsm[{key!r}] is not a cells × dimensions array."
            raise ValueError(msg)
        keep &= np.isfinite(values).all(1)
    cells = np.flatnonzero(keep)
    if len(cells) < MIN_CELLS:
        msg = (
            f"{counted(len(cells), 'cell')} {'has' if len(cells) == 1 else 'have'} a label"
            f"{' and a batch' if batch_key else ''} and finite embeddings; "
            f"scib-metrics needs at least {MIN_CELLS} (its neighbourhood metrics use 90 neighbours)."
        )
        raise ValueError(msg)
    labels = adata.obs[label_key].astype(str).to_numpy()[cells]
    if len(np.unique(labels)) < 2:
        msg = f"label_key {label_key!r} has fewer than 2 labels on the scored cells."
        raise ValueError(msg)
    batches = adata.obs[batch_key].astype(str).to_numpy()[cells] if batch_key else np.full(len(cells), "all")
    if batch_key is not None and len(np.unique(batches)) < 2:
        msg = f"batch_key {batch_key!r} has fewer than 2 batches on the scored cells."
        raise ValueError(msg)

    require("scib_metrics", "evaluation")
    from scib_metrics.benchmark import BatchCorrection, Benchmarker, BioConservation

    work = ad.AnnData(obs=pd.DataFrame({"labels": labels, "batch": batches}, index=adata.obs_names[cells]))
    for key in keys:
        work.obsm[key] = np.asarray(adata.obsm[key], dtype=np.float32)[cells]
    names = list(keys)
    if baseline or batch_key is not None:
        lognorm = log_normalized(adata, layer, cells)
        work.obsm[BASELINE] = hvg_pca(lognorm, n_top_genes=n_top_genes, n_comps=n_comps, seed=seed)
        del lognorm
        if baseline:
            names.append(BASELINE)
    benchmarker = Benchmarker(
        work,
        batch_key="batch",
        label_key="labels",
        embedding_obsm_keys=names,
        bio_conservation_metrics=BioConservation(),
        batch_correction_metrics=BatchCorrection() if batch_key is not None else None,
        pre_integrated_embedding_obsm_key=BASELINE if BASELINE in work.obsm else names[0],
        n_jobs=n_jobs,
        progress_bar=settings.progress_bar,
    )
    exact = len(cells) <= EXACT_NEIGHBORS_MAX_CELLS
    benchmarker.prepare(neighbor_computer=_exact_neighbors(n_jobs) if exact else None)
    benchmarker.benchmark()
    results = benchmarker.get_results(min_max_scale=False, clean_names=True)
    metric_types = results.loc["Metric Type"]
    values = results.drop(index="Metric Type")
    table = pd.DataFrame(
        [
            {
                "embedding": name,
                "metric": metric,
                "metric_type": str(metric_types[metric]),
                "value": float(values.loc[name, metric]),
            }
            for name in names
            for metric in values.columns
        ]
    )
    if not inplace:
        return table
    from importlib.metadata import version

    params = {
        "label_key": label_key,
        "embeddings": names,
        "baseline": BASELINE if baseline else "",
        "n_cells": len(cells),
        "n_labels": len(np.unique(labels)),
        "n_top_genes": n_top_genes,
        "n_comps": int(work.obsm[BASELINE].shape[1]) if BASELINE in work.obsm else 0,
        "neighbors": "exact" if exact else "pynndescent",
        "scib_metrics": version("scib-metrics"),
    }
    if batch_key is not None:
        params |= {"batch_key": batch_key, "n_batches": len(np.unique(batches))}
    if layer is not None:
        params["layer"] = layer
    adata.uns[key_added] = {"metrics": table, "params": params}
    return None
