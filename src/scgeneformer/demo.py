"""End-to-end demo on the bundled PBMC example: ``python -m scgeneformer demo`` (or ``sgf-demo``).

It rank-encodes the example, loads a model and embeds the cells. On a machine with internet access the published
dictionaries and checkpoint (default ``Geneformer-V1-10M``, 41 MB) are downloaded from the Hugging Face hub on first
use and cached in ``sgf.settings.cache_dir``. Offline, pass ``--local-files DIR`` (or set ``SGF_LOCAL_FILES``) with a
folder holding copies of the published files; they are checked by sha256 and seeded into the cache. When neither is
given and a ``../shared`` folder with such copies sits beside the current directory (a development checkout), it is
used; if it lacks the published weights but holds the small test checkpoint ``golden/checkpoints/tiny_v1``, the
demo says so and uses that instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path


def _local_files(option: str | None) -> Path | None:
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
    from scgeneformer._registry import seed_cache

    if local_files is not None:
        seeded = seed_cache(local_files)
        print(f"offline: seeded {len(seeded)} published files from {local_files} into {sgf.settings.cache_dir}")
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
        return sgf.GeneformerModel.from_pretrained(name)
    except sgf.DownloadError:
        fallback = None if local_files is None else local_files / "golden" / "checkpoints" / "tiny_v1"
        if fallback is None or not fallback.is_dir():
            raise
        print(f"offline: the published {name} weights are not available here; using the test checkpoint {fallback}")
        return sgf.GeneformerModel.from_pretrained(fallback)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m scgeneformer``."""
    parser = argparse.ArgumentParser(prog="python -m scgeneformer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the main job end to end on the bundled PBMC example")
    demo.add_argument("--model", default="Geneformer-V1-10M", help="checkpoint name or folder (see sgf.list_models())")
    demo.add_argument("--local-files", default=None, help="folder with copies of the published files (offline)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    run_demo(args.model, _local_files(args.local_files))


if __name__ == "__main__":
    main()
