"""Real-data evaluation of fine-tuning methods: full fine-tuning, LoRA, frozen trunk + head and multitask, against
logistic regression.

1. Base model. Geneformer's published weights cannot be downloaded here, so, as in ``eval_annotation.py``, a small
   BERT (V1 vocabulary; 4 layers, hidden 128, 4 heads, FFN 256) is pretrained by masked-gene prediction for
   ``--pretrain-seconds`` on the five shared datasets (each cell keeps its ``--max-genes`` top-ranked genes). It is
   saved in ``benchmarks/results/pretrained_small`` and reused by later runs (``--repretrain`` to redo it).
2. PBMC 3k cell types ("NA" dropped), one split for every method (``train_classifier``'s, seed 0: 80/10/10 stratified;
   the baseline uses the same training and test cells): (a) full fine-tuning, (b) LoRA adapters (rank ``--lora-r``
   on attention and feed-forward layers) + head, (c) frozen trunk (embeddings and every layer) + head, (d) scanpy
   ``normalize_total`` + ``log1p`` + 2,000 HVGs + PCA(50) + logistic regression, fitted on the training cells.
   Each fine-tuning runs in its own process, for its peak memory: ``peak_rss_mib`` (the process) and
   ``training_rss_increase_mib`` (peak minus the resident memory just before training).
3. Kang 2018 IFN-β PBMCs: ``condition`` (stim/ctrl) and ``cell_type``. A held-out 20% of cells, stratified by both,
   is the test set for everything: one multitask model (two heads on one encoder), two single-task models, and
   logistic regression per task.

Results go to ``benchmarks/results/eval_finetuning.json`` (git-ignored) and are printed as tables.

Usage::

    python benchmarks/eval_finetuning.py [--pretrain-seconds 300] [--epochs 8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_annotation import (
    DATASETS,
    KEY,
    ROOT,
    SHARED,
    baseline,
    encode,
    pooled_corpus,
)

RESULTS = ROOT / "benchmarks" / "results"
PRETRAINED = RESULTS / "pretrained_small"
DICTIONARIES = SHARED / "data" / "dictionaries" / "V1_gc30M"


def rss_mib(field: str = "VmRSS") -> float:
    """Resident memory (``VmRSS``) or its peak (``VmHWM``) of this process, in MiB.

    Not ``getrusage``: on Linux a child process inherits its parent's ``ru_maxrss`` at fork.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def small_config() -> dict:
    import scgeneformer as sgf

    v1 = sgf.model.get_checkpoint("Geneformer-V1-10M").config
    return dict(v1, num_hidden_layers=4, hidden_size=128, num_attention_heads=4, intermediate_size=256)


def pretrain(
    seconds: float,
    max_genes: int | None,
    folder: Path = PRETRAINED,
    *,
    lr: float = 5e-4,
    warmup_steps: int = 20,
) -> None:
    """Pretrain the small base model on the pooled corpus (cells cut to ``max_genes``) for ``seconds`` and save it."""
    import anndata as ad

    import scgeneformer as sgf

    encoded = {}
    for name in DATASETS:
        adata = ad.read_h5ad(SHARED / "data" / "datasets" / f"{name}.h5ad")
        encoded[name] = encode(adata, DICTIONARIES, max_genes)
    config = small_config()
    corpus = pooled_corpus(encoded, int(config["vocab_size"]))
    torch.manual_seed(0)
    model = sgf.GeneformerModel(corpus, bert_config=config, vocabulary="V1")
    start = time.perf_counter()
    model.train(
        max_epochs=1000,  # stopped by max_time
        train_size=0.95,
        validation_size=0.05,
        plan_kwargs={"lr": lr, "schedule": "constant", "warmup_steps": warmup_steps},
        max_time={"seconds": seconds},
        execution={"accelerator": "cpu", "progress_bar": False},
    )
    print(f"pretrained the small model for {time.perf_counter() - start:.0f} s", flush=True)
    model.save(folder, overwrite=True)


def pbmc():
    import anndata as ad

    adata = ad.read_h5ad(SHARED / "data" / "datasets" / "pbmc3k_annotated.h5ad")
    adata = adata[(adata.obs["cell_type"].astype(str) != "NA").to_numpy()].copy()
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(str).astype("category")
    return encode(adata, DICTIONARIES, ARGS.max_genes)


def kang():
    import anndata as ad

    adata = ad.read_h5ad(SHARED / "data" / "datasets" / "kang2018_ifnb_832cells.h5ad")
    return encode(adata, DICTIONARIES, ARGS.max_genes)


def kang_test_cells(adata) -> np.ndarray:
    from sklearn.model_selection import train_test_split

    strata = adata.obs["condition"].astype(str) + "|" + adata.obs["cell_type"].astype(str)
    _, test = train_test_split(np.arange(adata.n_obs), test_size=0.2, stratify=strata, random_state=0)
    mask = np.zeros(adata.n_obs, dtype=bool)
    mask[test] = True
    return mask


def fine_tune(method: str, args) -> dict:
    """One fine-tuning run (in its own process): the report, parameters, memory and time."""
    import scgeneformer as sgf

    data = pbmc() if method in ("full", "lora", "frozen") else kang()
    model = sgf.GeneformerModel.load(PRETRAINED).copy(data, encoding_key=KEY)
    options = {
        "max_epochs": args.epochs,
        "seed": 0,
        "execution": {"accelerator": "cpu", "progress_bar": False},
        "enable_progress_bar": False,
    }
    if method == "lora":
        model.add_lora(r=args.lora_r, alpha=2 * args.lora_r, target_modules=("query", "key", "value", "dense"))
        options["plan_kwargs"] = {"lr": args.lr_adapters}
    elif method == "frozen":
        options |= {"freeze_layers": model.module.n_layers, "freeze_embeddings": True}
        options["plan_kwargs"] = {"lr": args.lr_adapters}
    else:
        options["plan_kwargs"] = {"lr": args.lr}
    if method in ("full", "lora", "frozen"):
        options["labels_key"] = "cell_type"
    else:
        options["test_cells"] = kang_test_cells(data)
        options["labels_key"] = {
            "multitask": ["condition", "cell_type"],
            "condition": "condition",
            "cell_type": "cell_type",
        }[method]
    before = rss_mib()
    start = time.perf_counter()
    report = model.train_classifier(**options)
    seconds = time.perf_counter() - start
    peak = rss_mib("VmHWM")
    epochs = len(model.history_["train_loss"])
    trainable, total = model.trainable_parameters()
    if method == "frozen":  # training restored requires_grad afterwards: what trained was the head
        trainable = sum(p.numel() for p in model.module.classifier.parameters())
    out = {
        "method": method,
        "accuracy": report["accuracy"],
        "macro_f1": report["macro_f1"],
        "n_test": report["n_cells"],
        "epochs": epochs,
        "seconds": seconds,
        "seconds_per_epoch": seconds / max(epochs, 1),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "peak_rss_mib": peak,
        "training_rss_increase_mib": peak - before,
        "train_indices": np.asarray(model.train_indices).tolist(),
        "test_indices": np.asarray(model.test_indices).tolist(),
    }
    if "tasks" in report:
        out["tasks"] = {t: {k: r[k] for k in ("accuracy", "macro_f1", "n_cells")} for t, r in report["tasks"].items()}
    return out


def run_in_subprocess(method: str) -> dict:
    output = RESULTS / f"eval_finetuning_{method}.json"
    command = [sys.executable, __file__, "--method", method, "--output", str(output), *FORWARDED]
    subprocess.run(command, check=True)
    return json.loads(output.read_text())


def main() -> None:
    global ARGS, FORWARDED
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-genes", type=int, default=128)
    parser.add_argument("--pretrain-seconds", type=float, default=300)
    parser.add_argument("--repretrain", action="store_true")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4, help="full fine-tuning")
    parser.add_argument("--lr-adapters", type=float, default=2e-3, help="LoRA and frozen trunk")
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--method", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--output", default=str(RESULTS / "eval_finetuning.json"))
    ARGS = parser.parse_args()
    FORWARDED = [
        f"--max-genes={ARGS.max_genes}",
        f"--epochs={ARGS.epochs}",
        f"--lr={ARGS.lr}",
        f"--lr-adapters={ARGS.lr_adapters}",
        f"--lora-r={ARGS.lora_r}",
    ]
    warnings.simplefilter("ignore", UserWarning)  # rank_encode's note on genes outside the vocabulary, per dataset
    if ARGS.method is not None:
        Path(ARGS.output).write_text(json.dumps(fine_tune(ARGS.method, ARGS)))
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    if ARGS.repretrain or not (PRETRAINED / "model.json").is_file():
        pretrain(ARGS.pretrain_seconds, ARGS.max_genes)
    results = {"args": vars(ARGS), "device": f"cpu ({torch.get_num_threads()} threads)"}

    # PBMC 3k cell types -----------------------------------------------------------------------------------------
    pbmc_runs = {method: run_in_subprocess(method) for method in ("full", "lora", "frozen")}
    split = pbmc_runs["full"]
    for method, run in pbmc_runs.items():
        assert run["test_indices"] == split["test_indices"], f"{method} used other test cells"
    data = pbmc()
    labels = data.obs["cell_type"].astype(str).to_numpy()
    classes = sorted(set(labels))
    codes = pd.Categorical(labels, categories=classes).codes.astype(np.int64)
    import anndata as ad

    counts = ad.read_h5ad(SHARED / "data" / "datasets" / "pbmc3k_annotated.h5ad")[data.obs_names].copy()
    start = time.perf_counter()
    logistic = baseline(counts, np.asarray(split["train_indices"]), np.asarray(split["test_indices"]), codes, classes)
    pbmc_rows = [
        {k: v for k, v in run.items() if k not in ("train_indices", "test_indices")} for run in pbmc_runs.values()
    ]
    pbmc_rows.append(
        {
            "method": "hvg_pca_logreg",
            "accuracy": logistic["accuracy"],
            "macro_f1": logistic["macro_f1"],
            "n_test": logistic["n_cells"],
            "seconds": time.perf_counter() - start,
            "trainable_parameters": 50 * 2000 + (50 + 1) * len(classes),
        }
    )
    results["pbmc3k"] = pbmc_rows

    # Kang 2018: multitask vs single-task vs logistic regression ---------------------------------------------------
    kang_runs = {method: run_in_subprocess(method) for method in ("multitask", "condition", "cell_type")}
    data = kang()
    test = np.flatnonzero(kang_test_cells(data))
    train = np.setdiff1d(np.arange(data.n_obs), test)
    kang_counts = ad.read_h5ad(SHARED / "data" / "datasets" / "kang2018_ifnb_832cells.h5ad")
    kang_rows = []
    for task in ("condition", "cell_type"):
        labels = data.obs[task].astype(str).to_numpy()
        classes = sorted(set(labels))
        codes = pd.Categorical(labels, categories=classes).codes.astype(np.int64)
        logistic = baseline(kang_counts, train, test, codes, classes)
        multi = kang_runs["multitask"]["tasks"][task]
        single = kang_runs[task]
        kang_rows += [
            {
                "task": task,
                "method": "multitask (one model)",
                "accuracy": multi["accuracy"],
                "macro_f1": multi["macro_f1"],
            },
            {"task": task, "method": "single-task", "accuracy": single["accuracy"], "macro_f1": single["macro_f1"]},
            {
                "task": task,
                "method": "hvg_pca_logreg",
                "accuracy": logistic["accuracy"],
                "macro_f1": logistic["macro_f1"],
            },
        ]
    results["kang2018"] = {
        "rows": kang_rows,
        "runs": {
            m: {k: v for k, v in r.items() if k not in ("train_indices", "test_indices")} for m, r in kang_runs.items()
        },
    }
    Path(ARGS.output).write_text(json.dumps(results, indent=2))
    print("\nPBMC 3k cell types (same split):")
    print(pd.DataFrame(pbmc_rows).to_string(index=False))
    print("\nKang 2018 (same held-out cells):")
    print(pd.DataFrame(kang_rows).to_string(index=False))


ARGS = None
FORWARDED: list[str] = []

if __name__ == "__main__":
    main()
