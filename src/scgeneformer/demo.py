"""End-to-end demo on the bundled PBMC example: ``scgeneformer demo`` (or ``python -m scgeneformer demo``).

It rank-encodes the example, loads a model and embeds the cells. On a machine with internet access the published
dictionaries and checkpoint (default ``Geneformer-V1-10M``, 41 MB) are downloaded from the Hugging Face hub on first
use and cached in ``sgf.settings.cache_dir``. Offline, point ``--local-files`` (or ``SGF_LOCAL_FILES``, i.e.
``sgf.settings.local_files``) at a folder holding copies of the published files; they are checked by sha256 and
copied into the cache. When neither is given and a ``../shared`` folder sits beside the current directory (a
development checkout), it is used; if it lacks the published weights but holds the small test checkpoint
``golden/checkpoints/tiny_v1``, the demo says so and uses that instead.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def local_files_folder(option: str | None) -> Path | None:
    """The folder of local copies: the option, else ``SGF_LOCAL_FILES``, else ``../shared`` if it exists."""
    if option:
        return Path(option)
    if os.environ.get("SGF_LOCAL_FILES"):
        return Path(os.environ["SGF_LOCAL_FILES"])
    beside = Path.cwd().parent / "shared"
    return beside if beside.is_dir() else None


def run_demo(model_name: str = "Geneformer-V1-10M", local_files: Path | None = None) -> None:
    """Rank-encode the bundled example, embed it and print what was stored."""
    import numpy as np

    import scgeneformer as sgf

    if local_files is not None:
        sgf.settings.local_files = local_files
        print(f"published files are taken from local copies in {local_files} when present")
    model = _load_model(model_name, local_files)
    vocabulary = model.vocabulary_version
    adata = sgf.datasets.pbmc_example()
    print(f"example: {adata.n_obs} cells x {adata.n_vars} genes, {adata.obs['cell_type'].nunique()} cell types")
    start = time.perf_counter()
    try:
        sgf.pp.rank_encode(adata, vocabulary=vocabulary, gene_id_key="ensembl_id")
    except sgf.DownloadError as e:
        raise SystemExit(f"{e}\nOffline? Pass --local-files with copies of the published dictionaries.") from e
    elapsed = time.perf_counter() - start
    info = adata.uns["geneformer"]
    lengths = adata.obs["geneformer_n_tokens"].to_numpy()
    print(
        f"rank_encode ({vocabulary}): {info['n_genes_in_vocabulary']} genes in the vocabulary holding "
        f"{100 * info['share_of_counts_in_vocabulary']:.1f}% of counts; {info['n_cells_encoded']} cells encoded, "
        f"median length {int(np.median(lengths))} tokens, in {elapsed:.2f} s"
    )
    first = sgf.pp.input_ids(adata, [0])[0]
    genes = first[1:6] if len(first) > 6 else first[:5]
    symbols = sgf.get_vocabulary(vocabulary).id_to_symbol[genes]
    print(f"cell {adata.obs_names[0]} ({adata.obs['cell_type'].iloc[0]}): top genes {', '.join(map(str, symbols))}")
    start = time.perf_counter()
    sgf.tl.embed(adata, model, execution={"progress_bar": False})
    elapsed = time.perf_counter() - start
    embedding = adata.obsm["X_geneformer"]
    print(f"embed: {embedding.shape[0]} cells x {embedding.shape[1]} dimensions in {elapsed:.1f} s ({model})")
    print(adata)


def _load_model(name: str, local_files: Path | None):
    import scgeneformer as sgf

    try:
        return sgf.InferenceModel.from_pretrained(name)
    except sgf.DownloadError:
        fallback = None if local_files is None else local_files / "golden" / "checkpoints" / "tiny_v1"
        if fallback is None or not fallback.is_dir():
            raise
        print(f"offline: the published {name} weights are not available here; using the test checkpoint {fallback}")
        return sgf.InferenceModel.from_pretrained(fallback)
