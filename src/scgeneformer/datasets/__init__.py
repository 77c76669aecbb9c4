"""Small example data bundled with the package."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anndata import AnnData

_HERE = Path(__file__).parent


def pbmc_example() -> AnnData:
    """134 peripheral blood mononuclear cells with raw counts and cell types, for examples and smoke tests.

    Up to 15 cells of each of the 9 annotated types of the 10x Genomics PBMC 3k dataset (CC BY 4.0; labels from the
    Seurat tutorial), restricted to the 11,173 genes expressed in them. ``var_names`` are gene symbols and
    ``var["ensembl_id"]`` Ensembl IDs; ``X`` holds int32 UMI counts; ``obs["cell_type"]`` the annotation.

    Examples
    --------
    >>> adata = sgf.datasets.pbmc_example()
    >>> adata.n_obs
    134
    """
    import anndata as ad

    return ad.read_h5ad(_HERE / "pbmc_example.h5ad")
