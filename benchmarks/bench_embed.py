"""Embedding throughput, FLOPs per cell and model-FLOP utilisation of ``sgf.tl.embed``.

A randomly initialised model with the real architecture of a published checkpoint (no download needed) embeds
PBMC 3k cells; the matmul peak of the same device is measured in the same run, and MFU = useful model FLOPs per
second / that peak. Useful FLOPs count every matrix product of the layers actually run, on unpadded lengths:
per layer and cell of length L, 8·L·d² (attention projections) + 4·L·d·f (feed-forward) + 4·L²·d (scores and
weighted values).

Usage::

    python benchmarks/bench_embed.py [--model Geneformer-V1-10M] [--cells 2700] [--repeats 3] [--accelerator cpu]
    python benchmarks/bench_embed.py --model Geneformer-V2-104M --cells 200
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SGF_SHARED_DIR", ROOT.parent / "shared"))


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int = 4096, repeats: int = 5) -> float:
    """Best observed FLOP/s of a square matrix product."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = 0.0
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def model_flops(lengths: np.ndarray, config, n_layers: int) -> float:
    d, f = config.hidden_size, config.intermediate_size
    lengths = lengths.astype(np.float64)
    per_layer = 8 * lengths * d**2 + 4 * lengths * d * f + 4 * lengths**2 * d
    return float(n_layers * per_layer.sum())


def random_model(checkpoint):
    """A randomly initialised model (seed 0, eval mode) with the architecture of a published checkpoint."""
    import scgeneformer as sgf

    torch.manual_seed(0)
    model = sgf.GeneformerModel(bert_config=checkpoint.config, vocabulary=checkpoint.vocabulary)
    model.module.eval()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Geneformer-V1-10M")
    parser.add_argument("--cells", type=int, default=2700)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layer", type=int, default=-1)
    parser.add_argument("--accelerator", default="auto", help="cpu, cuda or mps (sgf.Execution)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--token-budget", type=int, default=None)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "embed.json"))
    args = parser.parse_args()

    import anndata as ad

    import scgeneformer as sgf

    checkpoint = sgf.model.get_checkpoint(args.model)
    folder = "V1_gc30M" if checkpoint.vocabulary == "V1" else "V2_gc104M"
    adata = ad.read_h5ad(SHARED / "data" / "datasets" / "pbmc3k_annotated.h5ad")
    adata = adata[: args.cells].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sgf.pp.rank_encode(adata, vocabulary=SHARED / "data" / "dictionaries" / folder, gene_id_key="ensembl_id")
    model = random_model(checkpoint)
    execution = sgf.Execution(
        accelerator=args.accelerator, precision=args.precision, token_budget=args.token_budget, progress_bar=False
    )
    device = execution.device
    config = model.module.config
    n_run = model.hidden_state_index(args.layer)
    lengths = adata.obs["geneformer_n_tokens"].to_numpy()
    flops = model_flops(lengths[lengths > 0], config, n_run)
    peak_dtype = torch.bfloat16 if device.type == "cuda" and args.precision in ("auto", "bf16") else torch.float32
    peak = matmul_peak(device, peak_dtype)
    # Warm-up on a few cells (allocator, kernels), not timed.
    sgf.tl.embed(adata[:8].copy(), model, layer=args.layer, execution=execution)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        sgf.tl.embed(adata, model, layer=args.layer, execution=execution)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    result = {
        "model_config": args.model,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "precision": args.precision,
        "cells": int((lengths > 0).sum()),
        "mean_length": float(lengths[lengths > 0].mean()),
        "layers_run": n_run,
        "seconds": times,
        "median_seconds": median,
        "cells_per_s": (lengths > 0).sum() / median,
        "gflop_per_cell": flops / (lengths > 0).sum() / 1e9,
        "achieved_tflops": flops / median / 1e12,
        "matmul_peak_tflops": peak / 1e12,
        "mfu": flops / median / peak,
    }
    print(json.dumps(result, indent=2))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
