"""Projection: deleting every gene of 1,500 cells on 1, 8 and 64 GPUs, from measured throughput and stated assumptions.

Work. A cell of n genes (V2: L = n + 2 tokens) runs its original and n deleted copies of L - 1 tokens through the
layers that ``layer=-1`` needs (all but the last); the FLOPs of a sequence of length L per layer are
8·L·d² + 4·L·d·f + 4·L²·d (as in ``bench_embed.py``). Two screens: 1,500 PBMC 3k cells (V2 encoding, drawn as
``perturb(max_cells=1500)`` draws them), and the reference's reported case of ~6 million forward passes for 1,500
cells (~4,000 genes per cell, a deeply sequenced tissue).

Sharing. The cells are cut into the parts ``perturb`` uses (about 1M perturbed tokens each) and the parts are
shared out over N devices exactly as ``perturb`` does (largest first, to the least loaded device); the time is the
most loaded device's (load balance = total / (N × max)).

Throughput per device. Measured on CPU: ``bench_perturb.py`` (V1-10M, 716-gene cell: 4.565 TFLOP of model FLOPs in
27.40 s, 167 GFLOP/s, 86% of the measured matmul peak). GPUs were not available here, so their throughput is an
assumption: 50% of the dense bf16 peak (A100 312 TFLOP/s, H100 SXM 989 TFLOP/s), below the 86% reached on CPU, for
the smaller matrix products of short sequences. Per-process overhead: the second process's start-up measured by
``bench_scale.py perturb --processes 2`` (imports, data, model), paid once per run in parallel.

Usage::

    python benchmarks/project_screen.py [--startup-seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SGF_SHARED_DIR", ROOT.parent / "shared"))
sys.path.insert(0, str(ROOT / "benchmarks"))

CPU_FLOPS = 4.565e12 / 27.40  # bench_perturb.py, V1-10M, measured (benchmarks/README.md)
GPU_FLOPS = {"A100 (assumed 50% of 312 TFLOP/s)": 0.5 * 312e12, "H100 (assumed 50% of 989 TFLOP/s)": 0.5 * 989e12}
CHUNK_TOKENS = 1_000_000


def layer_flops(length: np.ndarray, d: int, f: int) -> np.ndarray:
    length = np.asarray(length, dtype=np.float64)
    return 8 * length * d**2 + 4 * length * d * f + 4 * length**2 * d


def screen(n_genes: np.ndarray, config: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per-part FLOPs and per-cell FLOPs of deleting every gene of cells with ``n_genes`` genes (V2)."""
    d, f, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"] - 1
    length = n_genes + 2
    per_cell = layers * (n_genes * layer_flops(length - 1, d, f) + layer_flops(length, d, f))
    tokens = n_genes * (length - 1)
    parts, running, start = [], 0, 0
    for j, t in enumerate(tokens):
        running += t
        if running >= CHUNK_TOKENS:
            parts.append(per_cell[start : j + 1].sum())
            start, running = j + 1, 0
    if start < len(tokens):
        parts.append(per_cell[start:].sum())
    return np.array(parts), per_cell


def pbmc_lengths(n: int) -> np.ndarray:
    import anndata as ad

    import scgeneformer as sgf

    adata = ad.read_h5ad(SHARED / "data" / "datasets" / "pbmc3k_annotated.h5ad")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sgf.pp.rank_encode(adata, vocabulary=SHARED / "data" / "dictionaries" / "V2_gc104M", gene_id_key="ensembl_id")
    genes = adata.obs["geneformer_n_tokens"].to_numpy() - 2
    order = np.random.default_rng(42).permutation(len(genes))[:n]  # perturb's max_cells draw
    return np.sort(genes[order])[::-1]


def main() -> None:
    import scgeneformer as sgf
    from scgeneformer.tl._perturb._planning import share_by_cost  # the assignment perturb itself uses

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1500)
    parser.add_argument("--startup-seconds", type=float, default=20.0, help="per-run process start-up (measured)")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "projection.json"))
    args = parser.parse_args()
    scenarios = {
        "PBMC 3k cells (V2: mean %d genes)": pbmc_lengths(args.cells),
        "deep tissue, ~4,000 genes per cell (the reference's 6M-pass case)": np.full(args.cells, 4000),
    }
    rows = []
    for name, n_genes in scenarios.items():
        name = name.replace("%d", f"{n_genes.mean():.0f}") if "%d" in name else name
        for model in ("Geneformer-V2-104M", "Geneformer-V2-316M"):
            config = sgf.model.get_checkpoint(model).config
            parts, per_cell = screen(n_genes, config)
            total = per_cell.sum()
            for device, flops in {"CPU, 2 cores (measured)": CPU_FLOPS, **GPU_FLOPS}.items():
                for n in (1, 8, 64):
                    if device.startswith("CPU") and n > 1:
                        continue
                    loads = [parts[s].sum() for s in share_by_cost(parts, n)]
                    balance = total / (n * max(loads))
                    hours = (max(loads) / flops + (args.startup_seconds if n > 1 else 0)) / 3600
                    rows.append(
                        {
                            "screen": name,
                            "model": model,
                            "device": device,
                            "devices": n,
                            "forward_passes": int(n_genes.sum() + len(n_genes)),
                            "parts": len(parts),
                            "pflop": total / 1e15,
                            "load_balance": balance,
                            "hours": hours,
                        }
                    )
    Path(args.output).write_text(json.dumps(rows, indent=2))
    import pandas as pd

    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_colwidth", 70):
        print(table.to_string(index=False, float_format=lambda x: f"{x:.3g}"))


if __name__ == "__main__":
    main()
