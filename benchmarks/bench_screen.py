"""Exact vs two-stage screens (``sgf.tl.perturb(..., "all", screen=...)``), in the same run.

Cells: ``--cells`` full-length PBMC 3k cells (rank-encoded with the V1 dictionaries; "NA" cell types and the tests'
cells left out) drawn with ``--seed``. Models:

- ``small``: BERT with the V1 vocabulary, 4 layers, hidden 128, 4 heads, FFN 256, pretrained here by masked-gene
  prediction on the five shared datasets (cells cut to their ``--pretrain-max-genes`` top genes) for
  ``--pretrain-seconds``; saved in ``benchmarks/results/pretrained_screen`` and reused (``--repretrain`` redoes it).
- ``random10m``: the Geneformer-V1-10M architecture (6 layers, hidden 256), random weights (``torch.manual_seed(0)``).
- ``random-v2``: the smallest V2 architecture, gf-12L-95M-i4096 (V2 vocabulary with ``<cls>``/``<eos>``, 12 layers,
  hidden 512, input size 4096), random weights (``torch.manual_seed(0)``); cells encoded with the V2 dictionaries.

Each run times the exact screen, then for each ``--anchors`` value (exact anchor perturbations that start stage 1):
the anchors alone (``n_confirm=0``, ``n_confirm_genes=0``: the anchors exact, every other value an estimate) and the
two-stage screen for each ``--confirm`` value (exact perturbations per cell chosen in rounds after the anchors, with
``--confirm-genes`` genes confirmed across cells); all through the public API, one CPU. Reported per setting:

- ``speed-up``: wall time of the exact screen / of the two-stage screen (both stages);
- ``recall per cell``: of each cell's exact top 20 perturbations (largest ``1 - cosine``), the share among the screen's
  top 20 *confirmed* ones (exact values: anchors, rounds and stage 2); ties in the exact values at the 20th place count
  as hits (a screen gene whose exact value reaches the 20th);
- ``recall across cells``: the same for the top 20 genes by mean cosine over cells (the ``genes`` summary; for the
  two-stage screen its genes confirmed in all their cells);
- ``spearman``: per-cell Spearman correlation of the anchors-only values (estimates, and the anchors' exact values)
  with the exact values (median over cells).

Results go to ``benchmarks/results/bench_screen_<model>.json`` and are printed as a Markdown table.

Usage::

    python benchmarks/bench_screen.py --model small --cells 50 --anchors 16 --confirm 20 40 60 80
    python benchmarks/bench_screen.py --model random10m --cells 5 --anchors 16 32 --confirm 20 40
    python benchmarks/bench_screen.py --model small --cells 50 --perturbation overexpress
    python benchmarks/bench_screen.py --model random-v2 --cells 3 --max-genes 400 --anchors 16 32 --confirm 20 40

``--perturbation overexpress`` screens moves of every gene to the top instead of deletions (results in
``bench_screen_<model>_overexpress.json``); the recalls then rank ``1 - cosine`` of the moves.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RESULTS = ROOT / "benchmarks" / "results"
PRETRAINED = RESULTS / "pretrained_screen"
DICTIONARIES = {
    "V1": SHARED / "data" / "dictionaries" / "V1_gc30M",
    "V2": SHARED / "data" / "dictionaries" / "V2_gc104M",
}
TEST_CELLS = {"ACGACCCTTGACCA-1", "GGCATATGGGGAGT-1"}  # cells of tests and other benchmarks
TOP = 20


def load_model(name: str):
    import scgeneformer as sgf

    if name == "small":
        return sgf.GeneformerModel.load(PRETRAINED)
    torch.manual_seed(0)
    name, vocabulary = ("Geneformer-V1-10M", "V1") if name == "random10m" else ("gf-12L-95M-i4096", "V2")
    return sgf.GeneformerModel(bert_config=sgf.model.get_checkpoint(name).config, vocabulary=vocabulary)


def load_cells(n_cells: int, seed: int, version: str = "V1", max_genes: int | None = None):
    import anndata as ad

    import scgeneformer as sgf

    adata = ad.read_h5ad(SHARED / "data" / "datasets" / "pbmc3k_annotated.h5ad")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # genes outside the vocabulary: expected
        sgf.pp.rank_encode(adata, vocabulary=DICTIONARIES[version], gene_id_key="ensembl_id", n_counts_key="n_counts")
    eligible = (adata.obs["cell_type"].astype(str) != "NA").to_numpy() & ~adata.obs_names.isin(list(TEST_CELLS))
    if max_genes is not None:
        eligible &= adata.obs["geneformer_n_tokens"].to_numpy() <= max_genes
    chosen = np.sort(np.random.default_rng(seed).choice(np.flatnonzero(eligible), n_cells, replace=False))
    return adata, adata.obs_names[chosen].tolist()


def per_cell_values(table, *, confirmed_only: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per cell: perturbed tokens and ``1 - cosine`` (float64) of its cell rows (only the exact ones if asked)."""
    rows = table[table["affected"].astype(str) == "cell"]
    if confirmed_only:
        rows = rows[rows["confirmed"].to_numpy()]
    out = {}
    for cell, group in rows.groupby(rows["cell"].astype(str), sort=False):
        out[cell] = (group["perturbed_token"].astype(str).to_numpy(), 1.0 - group["cosine"].to_numpy(np.float64))
    return out


def tie_aware_recall(truth: dict[str, float], ranked: list[str], top: int = TOP) -> float:
    """Share of ``ranked[:top]`` whose true value reaches the ``top``-th largest true value."""
    values = np.sort(np.fromiter(truth.values(), dtype=np.float64))[::-1]
    threshold = values[min(top, len(values)) - 1]
    return sum(truth[g] >= threshold for g in ranked[:top]) / min(top, len(values))


def recall_per_cell(exact: dict, screen: dict) -> float:
    recalls = []
    for cell, (tokens, shift) in exact.items():
        truth = dict(zip(tokens, shift, strict=True))
        s_tokens, s_shift = screen.get(cell, (np.array([], dtype=str), np.array([])))
        ranked = list(s_tokens[np.argsort(-s_shift, kind="stable")])
        recalls.append(tie_aware_recall(truth, ranked))
    return float(np.mean(recalls))


def recall_across(exact_summary, screen_summary, *, confirmed_only: bool = True) -> float:
    if confirmed_only and "n_confirmed" in screen_summary:  # genes exact in all their cells
        screen_summary = screen_summary[screen_summary["n_confirmed"] == screen_summary["n_cells"]]
    truth = dict(zip(exact_summary["perturbed_token"].astype(str), 1.0 - exact_summary["cosine_mean"], strict=True))
    return tie_aware_recall(truth, screen_summary["perturbed_token"].astype(str).tolist())


def confirmed_share(table) -> float:
    """Share of the cell rows whose values are exact."""
    return float(table.loc[table["affected"].astype(str) == "cell", "confirmed"].mean())


def spearman_per_cell(exact: dict, estimates: dict) -> float:
    from scipy.stats import spearmanr

    rhos = []
    for cell, (tokens, shift) in exact.items():
        order = dict(zip(*estimates[cell], strict=True))
        rhos.append(spearmanr(shift, [order[t] for t in tokens])[0])
    return float(np.nanmedian(rhos))


def machine() -> dict:
    load = os.getloadavg()
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_avg": load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["small", "random10m", "random-v2"], default="small")
    parser.add_argument("--max-genes", type=int, help="only cells with at most this many genes (cheaper exact runs)")
    parser.add_argument("--cells", type=int, default=50)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument(
        "--confirm", type=float, nargs="+", default=[20, 40, 60, 80], help="n_confirm values (below 1: a share)"
    )
    parser.add_argument("--anchors", type=int, nargs="+", default=[16], help="anchor perturbations per cell (stage 1)")
    parser.add_argument("--confirm-genes", type=int, default=20)
    parser.add_argument("--perturbation", choices=["delete", "overexpress"], default="delete")
    parser.add_argument("--pretrain-seconds", type=float, default=1200)
    parser.add_argument("--pretrain-max-genes", type=int, default=512)
    parser.add_argument("--repretrain", action="store_true")
    args = parser.parse_args()

    import scgeneformer as sgf
    from scgeneformer.tl._perturb import _two_stage

    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.model == "small" and (args.repretrain or not (PRETRAINED / "model.json").is_file()):
        from eval_finetuning import pretrain  # masked-gene pretraining of the small model, as there

        pretrain(args.pretrain_seconds, args.pretrain_max_genes, PRETRAINED, lr=1e-3, warmup_steps=50)
    model = load_model(args.model)
    version = "V2" if args.model == "random-v2" else "V1"
    adata, cells = load_cells(args.cells, args.seed, version, args.max_genes)
    lengths = adata.obs.loc[cells, "geneformer_n_tokens"].to_numpy()
    print(
        f"{args.model}: {len(cells)} cells, genes per cell median {np.median(lengths):.0f} "
        f"(min {lengths.min()}, max {lengths.max()}); {machine()}",
        flush=True,
    )
    options = {
        "cells": cells,
        "vocabulary": DICTIONARIES[version],
        "inplace": False,
        "execution": {"accelerator": "cpu", "progress_bar": False},
        "perturbation": args.perturbation,
    }

    def timed(**kwargs):
        start = time.perf_counter()
        result = sgf.tl.perturb(adata, model, "all", **options, **kwargs)
        return result, time.perf_counter() - start

    sgf.tl.perturb(adata, model, "all", **(options | {"cells": cells[:1]}), screen="two_stage")  # warm-up
    exact, exact_s = timed()
    exact_cells = per_cell_values(exact["cells"])
    shifts = np.concatenate([s for _, s in exact_cells.values()])
    print(
        f"exact: {exact_s:.1f} s, {len(shifts)} perturbations; 1 - cosine median {np.median(shifts):.2e}, "
        f"max {shifts.max():.2e}, distinct values {len(np.unique(shifts))}",
        flush=True,
    )
    rows, spearman = [], {}
    for n_anchors in args.anchors:
        _two_stage.N_ANCHORS = n_anchors
        estimates, stage1_s = timed(screen="two_stage", n_confirm=0, n_confirm_genes=0)
        estimate_cells = per_cell_values(estimates["cells"])
        spearman[n_anchors] = spearman_per_cell(exact_cells, estimate_cells)
        rows.append(
            {
                "setting": "anchors only",
                "n_anchors": n_anchors,
                "n_confirm": 0,
                "n_confirm_genes": 0,
                "seconds": stage1_s,
                "speed_up": exact_s / stage1_s,
                "confirmed_share": float(confirmed_share(estimates["cells"])),
                "recall_per_cell": recall_per_cell(exact_cells, estimate_cells),
                "recall_across_cells": recall_across(exact["genes"], estimates["genes"], confirmed_only=False),
                "spearman": spearman[n_anchors],
            }
        )
        print(rows[-1], flush=True)
        for n_confirm in [c if c < 1 else int(c) for c in args.confirm]:
            result, seconds = timed(screen="two_stage", n_confirm=n_confirm, n_confirm_genes=args.confirm_genes)
            table = result["cells"]
            rows.append(
                {
                    "setting": "two-stage",
                    "n_anchors": n_anchors,
                    "n_confirm": n_confirm,
                    "n_confirm_genes": args.confirm_genes,
                    "seconds": seconds,
                    "speed_up": exact_s / seconds,
                    "confirmed_share": float(confirmed_share(table)),
                    "recall_per_cell": recall_per_cell(exact_cells, per_cell_values(table, confirmed_only=True)),
                    "recall_across_cells": recall_across(exact["genes"], result["genes"]),
                }
            )
            print(rows[-1], flush=True)
    report = {
        "model": args.model,
        "perturbation": args.perturbation,
        "cells": len(cells),
        "genes_per_cell_median": float(np.median(lengths)),
        "perturbations": int(len(shifts)),
        "exact_seconds": exact_s,
        "spearman_stage1": spearman,
        "shift_median": float(np.median(shifts)),
        "rows": rows,
        "machine": machine(),
        "command": " ".join(sys.argv),
    }
    suffix = "" if args.perturbation == "delete" else f"_{args.perturbation}"
    (RESULTS / f"bench_screen_{args.model}{suffix}.json").write_text(json.dumps(report, indent=1))
    print(
        f"\n{args.model}, {args.perturbation}: {len(cells)} cells (median {np.median(lengths):.0f} genes), "
        f"exact {exact_s:.0f} s, "
        f"stage-1 Spearman by anchors per cell {spearman}\n"
    )
    print("| setting | anchors | n_confirm | confirmed | time (s) | speed-up | recall per cell | recall across cells |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['setting']} | {row['n_anchors']} | {row['n_confirm']} (+{row['n_confirm_genes']} genes) | "
            f"{row['confirmed_share']:.1%} | {row['seconds']:.1f} | {row['speed_up']:.1f}× | "
            f"{row['recall_per_cell']:.3f} | {row['recall_across_cells']:.2f} |"
        )


if __name__ == "__main__":
    main()
