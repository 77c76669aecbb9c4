"""In silico perturbation speed of ``sgf.tl.perturb``: perturbations/s, seconds per cell and model-FLOP utilisation.

A randomly initialised model with the real architecture of a published checkpoint (default Geneformer-V1-10M, no
download) deletes (or overexpresses) every gene, one at a time, of PBMC 3k cells encoded with the matching
vocabulary. By default the one cell ``ACGACCCTTGACCA-1`` (716 genes in V1) is perturbed; ``--n-cells N`` perturbs
the N first cells of the reference's draw instead (``max_cells=N``). Useful FLOPs count the encoder layers that run
(``layer=-1``: all but the last) on every unpadded sequence, the original included, as in ``bench_embed.py``;
MFU = those FLOPs per second / the matmul peak measured in the same run.

Usage::

    python benchmarks/bench_perturb.py                       # the 716-gene cell, 3 repeats, CPU fp32
    python benchmarks/bench_perturb.py --n-cells 5 --repeats 1
    python benchmarks/bench_perturb.py --accelerator cuda --precision bf16 --n-cells 50
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from bench_embed import ROOT, SHARED, matmul_peak, model_flops, random_model

CELL = "ACGACCCTTGACCA-1"


def perturbed_lengths(lengths: np.ndarray, perturbation: str, special: bool) -> np.ndarray:
    """Lengths of every sequence that runs: each original once, then one sequence per perturbed gene."""
    out = []
    for length in lengths:
        genes = length - (2 if special else 0)
        if perturbation == "delete":
            out += [length - 1] * genes
        else:  # overexpress: every gene but the top-ranked one, same length
            out += [length] * (genes - 1)
        out.append(length)
    return np.asarray(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Geneformer-V1-10M")
    parser.add_argument("--cell", default=CELL, help="obs name of the cell to perturb (ignored with --n-cells)")
    parser.add_argument("--n-cells", type=int, default=None, help="perturb this many cells instead")
    parser.add_argument("--perturbation", default="delete", choices=["delete", "overexpress"])
    parser.add_argument("--cell-cosine", default="gene_mean", choices=["gene_mean", "pooled"])
    parser.add_argument("--gene-shifts", action="store_true", help="also report every gene's shift")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layer", type=int, default=-1)
    parser.add_argument("--accelerator", default="auto", help="cpu, cuda or mps (sgf.Execution)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--token-budget", type=int, default=None)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "perturb.json"))
    args = parser.parse_args()

    import anndata as ad

    import scgeneformer as sgf

    checkpoint = sgf.model.get_checkpoint(args.model)
    folder = SHARED / "data" / "dictionaries" / ("V1_gc30M" if checkpoint.vocabulary == "V1" else "V2_gc104M")
    adata = ad.read_h5ad(SHARED / "data" / "datasets" / "pbmc3k_annotated.h5ad")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sgf.pp.rank_encode(adata, vocabulary=folder, gene_id_key="ensembl_id", n_counts_key="n_counts")
    model = random_model(checkpoint)
    execution = sgf.Execution(
        accelerator=args.accelerator, precision=args.precision, token_budget=args.token_budget, progress_bar=False
    )
    device = execution.device
    config = model.module.config
    n_run = model.hidden_state_index(args.layer)
    selection = {"max_cells": args.n_cells} if args.n_cells else {"cells": [args.cell]}
    options = {
        "perturbation": args.perturbation,
        "layer": args.layer,
        "pooling": "mean",
        "cell_cosine": args.cell_cosine,
        "gene_shifts": args.gene_shifts,
        "vocabulary": folder,
        "execution": execution,
        "inplace": False,
    }
    peak_dtype = torch.bfloat16 if device.type == "cuda" and args.precision in ("auto", "bf16") else torch.float32
    peak = matmul_peak(device, peak_dtype)
    # Warm-up (allocator, kernels) on a small cell, not timed.
    sgf.tl.perturb(adata, model, "all", cells=["GGCATATGGGGAGT-1"], **options)

    def timed_runs() -> tuple[list[float], dict]:
        times, results = [], None
        for _ in range(args.repeats):
            start = time.perf_counter()
            results = sgf.tl.perturb(adata, model, "all", **selection, **options)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return times, results

    times, results = timed_runs()
    cells = results["cells"]
    names = list(dict.fromkeys(cells["cell"].astype(str)))
    lengths = adata.obs.loc[names, "geneformer_n_tokens"].to_numpy()
    sequences = perturbed_lengths(lengths, args.perturbation, checkpoint.vocabulary == "V2")
    flops = model_flops(sequences, config, n_run)
    n_perturbations = int((cells["affected"] == "cell").sum())
    median = statistics.median(times)
    result = {
        "model_config": args.model,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "precision": args.precision,
        "perturbation": args.perturbation,
        "cells": names if len(names) <= 10 else len(names),
        "genes_per_cell": (lengths - (2 if checkpoint.vocabulary == "V2" else 0)).tolist()
        if len(names) <= 10
        else float(lengths.mean()),
        "layers_run": n_run,
        "perturbations": n_perturbations,
        "seconds": times,
        "median_seconds": median,
        "seconds_per_cell": median / len(names),
        "perturbations_per_s": n_perturbations / median,
        "tflop": flops / 1e12,
        "achieved_gflops": flops / median / 1e9,
        "matmul_peak_gflops": peak / 1e9,
        "mfu": flops / median / peak,
        # peak resident memory of the whole process (data, model and imports included)
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(json.dumps(result, indent=2))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
