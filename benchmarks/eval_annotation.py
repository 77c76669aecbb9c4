"""Real-data evaluation: pretrain a small Geneformer on the shared datasets, then annotate PBMC 3k cell types and
classify dosage-sensitive vs insensitive transcription factors.

Steps (all on CPU unless ``--accelerator`` says otherwise):

1. Pretraining corpus. The five shared count datasets are rank-encoded *separately* with the V1 dictionaries
   (``gene_id_key="ensembl_id"``; celltypist's float32 counts with ``allow_non_integer=True``). Their rank layers
   have different genes as columns, so they are not concatenated gene by gene: each dataset's rank layer is
   re-indexed onto a common var space, *the V1 token ids* (column ``t`` = token ``t``, ``var["geneformer_token"] =
   t``), and the re-indexed layers are stacked. A cell's token sequence is determined by which token holds which
   rank, so this gives exactly the per-dataset sequences (checked on a sample of cells). Pretraining is
   self-supervised: PBMC 3k cells are part of the corpus, but no label is used.
   Scale-down: with ``--max-genes K`` every cell keeps only its K top-ranked genes (ranks > K are dropped and the
   length capped at K), in the corpus and in the PBMC 3k data used downstream alike.
2. A small BERT (V1 vocabulary; 4 layers, hidden 128, 4 heads, FFN 256, input size 2048, otherwise the V1-10M
   configuration) is pretrained by masked-gene prediction for ``--pretrain-epochs`` epochs or ``--pretrain-seconds``
   (Lightning ``max_time``), whichever comes first. The masked-gene loss and accuracy of the pretraining
   validation cells (the split ``train()`` makes, ``model.validation_indices``) are computed before and after with
   the same fixed masks (``model.get_reconstruction_error``).
3. PBMC 3k cell types (``obs["cell_type"]``, "NA" dropped), one stratified split (seed 0, train 0.8 / validation 0.1
   / test 0.1), the one ``train_classifier`` makes itself (``model.train_indices``/``test_indices``); the script
   re-predicts the test cells and checks the confusion matrix against the report. Compared on the same test cells:
   (a) the pretrained small model fine-tuned, (b) the same architecture from random initialisation fine-tuned with
   the same settings, (c) scanpy ``normalize_total(1e4)`` + ``log1p`` + 2,000 HVGs fitted on the training cells +
   PCA (50) fitted on the training cells + ``LogisticRegression(max_iter=2000)``.
4. ``sgf.tl.gene_classification_cv`` (5 folds) of dosage-sensitive vs insensitive TFs with the pretrained model, on
   ``--gene-cv-cells`` PBMC 3k cells that hold at least one labelled gene.

Results go to ``benchmarks/results/eval_annotation.json`` (git-ignored).

Usage::

    python benchmarks/eval_annotation.py [--max-genes 128] [--pretrain-seconds 240] [--finetune-epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SGF_SHARED_DIR", ROOT.parent / "shared"))
DATASETS = [
    "pbmc3k_annotated",
    "kang2018_ifnb_832cells",
    "pbmc_3chemistries_2860cells",
    "sc_mixology_1408cells",
    "celltypist_demo_559cells",
]
KEY = "geneformer"


def encode(adata, dictionaries: Path, max_genes: int | None):
    """Rank-encode with V1 and keep only each cell's ``max_genes`` top-ranked genes."""
    import scgeneformer as sgf

    non_integer = not np.issubdtype(adata.X.dtype, np.integer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sgf.pp.rank_encode(
            adata, vocabulary=dictionaries, gene_id_key="ensembl_id", allow_non_integer=non_integer, key_added=KEY
        )
    if max_genes:
        if adata.uns[KEY]["params"]["cls_id"] >= 0:
            raise ValueError("--max-genes is written for V1 (no <cls>/<eos> tokens).")
        ranks = sp.csr_matrix(adata.layers[f"{KEY}_ranks"])
        ranks.data[ranks.data > max_genes] = 0
        ranks.eliminate_zeros()
        adata.layers[f"{KEY}_ranks"] = ranks
        adata.obs[f"{KEY}_n_tokens"] = np.minimum(adata.obs[f"{KEY}_n_tokens"].to_numpy(), max_genes)
    return adata


def to_token_space(adata, vocab_size: int) -> sp.csr_matrix:
    """The rank layer with columns re-indexed from genes to V1 token ids."""
    ranks = sp.csr_matrix(adata.layers[f"{KEY}_ranks"])
    token = adata.var[f"{KEY}_token"].to_numpy(dtype=np.int64)
    columns = token[ranks.indices]
    if (columns < 0).any():
        raise ValueError("a rank is held by a gene outside the vocabulary")
    out = sp.csr_matrix((ranks.data.copy(), columns, ranks.indptr.copy()), shape=(adata.n_obs, vocab_size))
    nnz = out.nnz
    out.sum_duplicates()
    if out.nnz != nnz:
        raise ValueError("two columns of one cell map to the same token")
    return out


def pooled_corpus(encoded: dict, vocab_size: int):
    import anndata as ad

    from scgeneformer import EncodingInfo

    first = next(iter(encoded.values()))
    params = {
        k: v for k, v in first.uns[KEY]["params"].items() if k in ("vocabulary", "input_size", "cls_id", "eos_id")
    }
    for name, a in encoded.items():
        other = {k: a.uns[KEY]["params"][k] for k in params}
        if other != params:
            raise ValueError(f"{name} was encoded with other parameters: {other} vs {params}")
    obs = pd.concat(
        [
            pd.DataFrame(
                {f"{KEY}_n_tokens": a.obs[f"{KEY}_n_tokens"].to_numpy(), "dataset": name},
                index=[f"{name}:{c}" for c in a.obs_names],
            )
            for name, a in encoded.items()
        ]
    )
    obs["dataset"] = obs["dataset"].astype("category")
    # one column per token id; the special tokens (<pad>, <mask>: ids 0 and 1) are no genes
    tokens = np.arange(vocab_size)
    var = pd.DataFrame({f"{KEY}_token": np.where(tokens < 2, -1, tokens)}, index=[str(t) for t in range(vocab_size)])
    layer = sp.vstack([to_token_space(a, vocab_size) for a in encoded.values()], format="csr")
    corpus = ad.AnnData(obs=obs, var=var, layers={f"{KEY}_ranks": layer})
    corpus.uns[KEY] = {"params": dict(first.uns[KEY]["params"])}
    # Check: the pooled sequences are the per-dataset sequences.
    info = EncodingInfo(corpus, KEY)
    offset, rng = 0, np.random.default_rng(0)
    for a in encoded.values():
        sample = np.sort(rng.choice(np.flatnonzero(a.obs[f"{KEY}_n_tokens"].to_numpy() > 0), 50, replace=False))
        own = EncodingInfo(a, KEY).sequences(sample)
        pooled = info.sequences(sample + offset)
        if not all(np.array_equal(x, y) for x, y in zip(own, pooled, strict=True)):
            raise AssertionError("pooled corpus does not reproduce the per-dataset token sequences")
        offset += a.n_obs
    return corpus


def history_summary(model) -> dict:
    out = {}
    for key, frame in getattr(model, "history_", {}).items():
        values = frame.iloc[:, 0].dropna().tolist() if len(frame) else []
        if values:
            out[key] = [float(v) for v in values]
    return out


def baseline(counts_adata, train: np.ndarray, test: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    import scanpy as sc
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression

    a = counts_adata.copy()
    a.X = sp.csr_matrix(a.X, dtype=np.float32)
    sc.pp.normalize_total(a, target_sum=1e4)  # per cell: nothing is fitted
    sc.pp.log1p(a)
    a_train = a[train].copy()
    sc.pp.highly_variable_genes(a_train, n_top_genes=2000)
    genes = a_train.var_names[a_train.var["highly_variable"].to_numpy()]
    x_train = a_train[:, genes].X.toarray()
    x_test = a[test][:, genes].X.toarray()
    pca = PCA(n_components=50, random_state=0).fit(x_train)
    clf = LogisticRegression(max_iter=2000).fit(pca.transform(x_train), labels[train])
    predicted = clf.predict(pca.transform(x_test))
    report = classification_metrics(labels[test], predicted, classes)
    report["n_hvg"] = len(genes)
    return report


def classification_metrics(true: np.ndarray, predicted: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, macro-F1 and confusion matrix of class codes (as in ``train_classifier``'s report)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    codes = np.arange(len(classes))
    return {
        "accuracy": float(accuracy_score(true, predicted)),
        "macro_f1": float(f1_score(true, predicted, labels=codes, average="macro", zero_division=0)),
        "confusion_matrix": confusion_matrix(true, predicted, labels=codes),
        "classes": list(classes),
        "n_cells": int(len(true)),
    }


def jsonable(report: dict) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in report.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-genes", type=int, default=128, help="top-ranked genes kept per cell (0: all)")
    parser.add_argument("--pretrain-epochs", type=int, default=1)
    parser.add_argument("--pretrain-seconds", type=float, default=240)
    parser.add_argument("--pretrain-lr", type=float, default=5e-4)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--finetune-lr", type=float, default=5e-4)
    parser.add_argument("--gene-cv-cells", type=int, default=400, help="PBMC 3k cells holding labelled TFs")
    parser.add_argument("--gene-cv-train-cells", type=int, default=300, help="n_cells of each fold's training")
    parser.add_argument("--gene-cv-epochs", type=int, default=1)
    parser.add_argument("--token-budget", type=int, default=8192)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "eval_annotation.json"))
    args = parser.parse_args()

    import anndata as ad

    import scgeneformer as sgf

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    execution = sgf.Execution(accelerator=args.accelerator, token_budget=args.token_budget, progress_bar=False)
    fit_kwargs = {"execution": execution, "enable_progress_bar": False, "enable_model_summary": False}
    dictionaries = SHARED / "data" / "dictionaries" / "V1_gc30M"
    max_genes = args.max_genes or None

    # 1. corpus ------------------------------------------------------------------------------------------------
    start = time.perf_counter()
    encoded = {}
    for name in DATASETS:
        a = ad.read_h5ad(SHARED / "data" / "datasets" / f"{name}.h5ad")
        encoded[name] = encode(a, dictionaries, max_genes)
    v1 = sgf.model.get_checkpoint("Geneformer-V1-10M").config
    small_config = dict(
        v1,
        num_hidden_layers=4,
        hidden_size=128,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=2048,
    )
    vocab_size = int(small_config["vocab_size"])
    corpus = pooled_corpus(encoded, vocab_size)
    lengths = corpus.obs[f"{KEY}_n_tokens"].to_numpy()
    corpus_stats = {
        "cells_per_dataset": {n: int(a.n_obs) for n, a in encoded.items()},
        "cells": int(corpus.n_obs),
        "encoded_cells": int((lengths > 0).sum()),
        "tokens": int(lengths.sum()),
        "mean_length": float(lengths[lengths > 0].mean()),
    }
    timings["encode_and_pool_s"] = time.perf_counter() - start
    print("corpus:", corpus_stats, flush=True)

    # 2. pretraining -------------------------------------------------------------------------------------------
    torch.manual_seed(0)
    sgf.GeneformerModel.setup_anndata(corpus)
    pretrained = sgf.GeneformerModel(corpus, bert_config=small_config, vocabulary="V1")
    init_state = {k: v.clone() for k, v in pretrained.module.state_dict().items()}
    initial = pretrained.copy()
    start = time.perf_counter()
    pretrained.train(
        max_epochs=args.pretrain_epochs,
        train_size=0.95,
        validation_size=0.05,
        # the run may be cut by max_time: no schedule that assumes a known length
        plan_kwargs={"lr": args.pretrain_lr, "schedule": "constant", "warmup_steps": 0.02},
        max_time={"seconds": args.pretrain_seconds},
        num_sanity_val_steps=0,
        **fit_kwargs,
    )
    timings["pretrain_s"] = time.perf_counter() - start
    pretrain_steps = int(pretrained.trainer.global_step) if getattr(pretrained, "trainer", None) else None
    val_cells = pretrained.validation_indices
    before = initial.get_reconstruction_error(corpus, val_cells, encoding_key=KEY, execution=execution)
    after = pretrained.get_reconstruction_error(corpus, val_cells, encoding_key=KEY, execution=execution)
    print("masked-gene validation before pretraining:", before, flush=True)
    print("masked-gene validation after pretraining:", after, f"({timings['pretrain_s']:.0f} s)", flush=True)
    pretrained_state = {k: v.detach().clone() for k, v in pretrained.module.state_dict().items()}
    n_train_cells = len(pretrained.train_indices)

    # 3. PBMC 3k cell types ------------------------------------------------------------------------------------
    pbmc = encoded["pbmc3k_annotated"]
    pbmc = pbmc[(pbmc.obs["cell_type"].astype(str) != "NA").to_numpy()].copy()
    pbmc.obs["cell_type"] = pbmc.obs["cell_type"].astype(str).astype("category")
    if (sgf.EncodingInfo(pbmc, KEY).lengths == 0).any():
        raise AssertionError("a labelled PBMC cell has no encoded gene")
    labels = pbmc.obs["cell_type"].astype(str).to_numpy()
    classes = sorted(set(labels))
    codes = pd.Categorical(labels, categories=classes).codes.astype(np.int64)
    cell_results = {}
    for name, state in (("pretrained_finetuned", pretrained_state), ("scratch_finetuned", init_state)):
        start = time.perf_counter()
        sgf.GeneformerModel.setup_anndata(pbmc, labels_key="cell_type")
        model = sgf.GeneformerModel(pbmc, bert_config=small_config, vocabulary="V1")
        model.module.load_state_dict(state)
        report = model.train_classifier(
            max_epochs=args.finetune_epochs,
            train_size=0.8,
            validation_size=0.1,
            seed=0,
            plan_kwargs={"lr": args.finetune_lr},
            **fit_kwargs,
        )
        seconds = time.perf_counter() - start
        train, val, test = model.train_indices, model.validation_indices, model.test_indices
        # Same test cells? Re-predict the test split: the confusion matrix must be the report's.
        probabilities = model.predict(pbmc, test, soft=True, encoding_key=KEY, execution=execution)
        mine = classification_metrics(codes[test], probabilities.to_numpy().argmax(1), classes)
        same = bool(
            report["n_cells"] == len(test) and np.array_equal(mine["confusion_matrix"], report["confusion_matrix"])
        )
        cell_results[name] = {
            **jsonable(report),
            "seconds": seconds,
            "same_test_cells_check": same,
            "history": history_summary(model),
        }
        print(
            f"{name}: accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f}, "
            f"test split reproduced: {same} ({seconds:.0f} s)",
            flush=True,
        )
        del model
    start = time.perf_counter()
    counts = ad.read_h5ad(SHARED / "data" / "datasets" / "pbmc3k_annotated.h5ad")
    counts = counts[pbmc.obs_names].copy()
    cell_results["hvg_pca_logreg"] = {
        **jsonable(baseline(counts, train, test, codes, classes)),
        "seconds": time.perf_counter() - start,
    }
    print(f"baseline: {cell_results['hvg_pca_logreg']}", flush=True)

    # 4. dosage-sensitive TFs ------------------------------------------------------------------------------------
    tf = pd.read_csv(SHARED / "data" / "gene_labels" / "dosage_sens_tf_labels.csv")
    gene_labels = {
        "sensitive": tf["dosage_sensitive"].dropna().astype(str).tolist(),
        "insensitive": tf["dosage_insensitive"].dropna().astype(str).tolist(),
    }
    labelled_tokens = set()
    ens = pbmc.var["ensembl_id"].astype(str).to_numpy()
    for genes in gene_labels.values():
        labelled_tokens |= set(pbmc.var[f"{KEY}_token"].to_numpy()[np.isin(ens, genes)].tolist())
    ranks = sp.csr_matrix(pbmc.layers[f"{KEY}_ranks"])
    token = pbmc.var[f"{KEY}_token"].to_numpy()
    holds = np.array(
        [
            bool(set(token[ranks.indices[ranks.indptr[i] : ranks.indptr[i + 1]]]) & labelled_tokens)
            for i in range(pbmc.n_obs)
        ]
    )
    rng = np.random.default_rng(0)
    candidates = np.flatnonzero(holds)
    chosen = np.sort(rng.choice(candidates, min(args.gene_cv_cells, len(candidates)), replace=False))
    gene_data = pbmc[chosen].copy()
    present = {c: int(np.isin(ens, g)[np.unique(ranks[chosen].indices)].sum()) for c, g in gene_labels.items()}
    print("labelled TFs present in the gene-CV cells:", present, flush=True)
    start = time.perf_counter()
    base = sgf.GeneformerModel(bert_config=small_config, vocabulary="V1")
    base.module.load_state_dict(pretrained_state)
    table = sgf.tl.gene_classification_cv(
        gene_data,
        base,
        gene_labels,
        n_folds=5,
        seed=0,
        max_epochs=args.gene_cv_epochs,
        plan_kwargs={"lr": args.finetune_lr},
        n_cells=args.gene_cv_train_cells,
        inplace=False,
        **fit_kwargs,
    )
    timings["gene_cv_s"] = time.perf_counter() - start
    print(table.to_string(), flush=True)
    gene_cv = {
        "folds": table.to_dict(orient="records"),
        "roc_auc_mean": float(table["roc_auc"].mean()),
        "roc_auc_sd": float(table["roc_auc"].std(ddof=1)),
        "macro_f1_mean": float(table["macro_f1"].mean()),
        "macro_f1_sd": float(table["macro_f1"].std(ddof=1)),
        "n_cells": len(chosen),
        "labelled_genes_present": present,
    }
    timings["total_s"] = time.perf_counter() - t0

    # report ------------------------------------------------------------------------------------------------------
    print(f"\n== PBMC 3k cell types, same test cells (n = {len(test)}) ==")
    print(f"{'method':<24}{'accuracy':>10}{'macro-F1':>10}")
    for name, r in cell_results.items():
        print(f"{name:<24}{r['accuracy']:>10.4f}{r['macro_f1']:>10.4f}")
    print(f"\n== masked-gene validation ({len(val_cells)} cells) ==")
    print(
        f"before: loss {before['loss']:.4f} acc {before['accuracy']:.4f}; "
        f"after: loss {after['loss']:.4f} acc {after['accuracy']:.4f}"
    )
    print("\n== dosage-sensitive vs insensitive TFs, 5-fold CV ==")
    print(
        f"ROC AUC {gene_cv['roc_auc_mean']:.3f} ± {gene_cv['roc_auc_sd']:.3f}; "
        f"macro-F1 {gene_cv['macro_f1_mean']:.3f} ± {gene_cv['macro_f1_sd']:.3f}"
    )
    print("timings:", {k: round(v, 1) for k, v in timings.items()})
    result = {
        "args": vars(args),
        "device": f"{args.accelerator} ({torch.get_num_threads()} threads)",
        "small_config": small_config,
        "corpus": corpus_stats,
        "pretraining": {
            "before": before,
            "after": after,
            "train_cells": n_train_cells,
            "global_steps": pretrain_steps,
            "history": history_summary(pretrained),
        },
        "cell_types": {
            "classes": classes,
            "n_train": len(train),
            "n_val": len(val),
            "n_test": len(test),
            "results": cell_results,
        },
        "gene_cv": gene_cv,
        "timings_s": timings,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
