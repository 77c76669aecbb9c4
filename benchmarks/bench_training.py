"""Masked-gene training throughput, model-FLOP utilisation and the time of each phase of a training step.

A randomly initialised model with the real architecture of a published checkpoint (default Geneformer-V1-10M, no
download needed; ``--layers``/``--hidden`` shrink it) is trained by masked-gene prediction on PBMC 3k cells for
``--warmup + --steps`` optimizer steps through ``model.train(max_steps=...)`` (Lightning), at the package's default
token budget unless ``--token-budget`` is given. A callback timestamps every step at Lightning's hooks and splits it
into phases: *data and loop* (from the end of one step to the start of the next: fetching and collating the batch,
masking, Lightning's loop), *forward* (to ``on_before_backward``: the forward pass, loss and metric logging),
*backward* (to ``on_after_backward``) and *optimizer* (to the end of the step: gradient clipping, the AdamW step,
the scheduler). The first ``--warmup`` steps are not counted. The fp32 matmul peak of the same device is measured in
the same run.

Training FLOPs = 3 × forward FLOPs, forward = every matrix product of the encoder on unpadded lengths, as in
``bench_embed.py`` (per layer and cell of length L: 8·L·d² + 4·L·d·f + 4·L²·d), plus the masked-gene head at the
selected positions only (2·d² for the transform + 2·d·vocab for the decoder, per selected token). MFU counts the
whole step cycle, data and loop included.

Usage::

    python benchmarks/bench_training.py [--steps 20] [--warmup 3]            # V1-10M, default token budget
    python benchmarks/bench_training.py --attention-dropout                  # the reference's attention dropout
    python benchmarks/bench_training.py --layers 3 --hidden 64 --steps 50    # a tiny model: per-step overhead
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SGF_SHARED_DIR", ROOT.parent / "shared"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_embed import matmul_peak, model_flops  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Geneformer-V1-10M")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps before them")
    parser.add_argument("--token-budget", type=int, default=None, help="padded tokens per batch (default: sgf's)")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--layers", type=int, default=None, help="override the number of layers")
    parser.add_argument("--hidden", type=int, default=None, help="override the hidden size (heads: hidden / 64)")
    parser.add_argument(
        "--attention-dropout", action="store_true", help="keep dropout on attention probabilities (off on CPU)"
    )
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "training.json"))
    args = parser.parse_args()

    import anndata as ad
    from lightning.pytorch.callbacks import Callback

    import scgeneformer as sgf

    checkpoint = sgf.model.get_checkpoint(args.model)
    folder = "V1_gc30M" if checkpoint.vocabulary == "V1" else "V2_gc104M"
    adata = ad.read_h5ad(SHARED / "data" / "datasets" / "pbmc3k_annotated.h5ad")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sgf.pp.rank_encode(adata, vocabulary=SHARED / "data" / "dictionaries" / folder, gene_id_key="ensembl_id")
    torch.manual_seed(0)
    bert_config = dict(checkpoint.config)
    if args.layers:
        bert_config["num_hidden_layers"] = args.layers
    if args.hidden:
        bert_config |= {
            "hidden_size": args.hidden,
            "intermediate_size": 2 * args.hidden,
            "num_attention_heads": max(1, args.hidden // 64),
        }
    model = sgf.GeneformerModel(adata, bert_config=bert_config, vocabulary=checkpoint.vocabulary)
    execution = sgf.Execution(accelerator=args.accelerator, token_budget=args.token_budget)
    token_budget = execution.token_budget_for(training=True)
    config = model.module.config
    d, vocab = config.hidden_size, config.vocab_size
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    peak = matmul_peak(device, torch.float32)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    class StepTimer(Callback):
        """Timestamps of each step at Lightning's hooks."""

        def __init__(self) -> None:
            self.records: list[dict] = []
            self._last_end: float | None = None
            self._marks: dict[str, float] = {}

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            sync()
            self._marks = {"start": time.perf_counter()}

        def on_before_backward(self, trainer, pl_module, loss) -> None:
            sync()
            self._marks["forward_end"] = time.perf_counter()

        def on_after_backward(self, trainer, pl_module) -> None:
            sync()
            self._marks["backward_end"] = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            sync()
            end = time.perf_counter()
            m = self._marks
            lengths = batch["attention_mask"].sum(1).cpu().numpy()
            n_selected = int((batch["mlm_labels"] != -100).sum())
            forward = model_flops(lengths, config, config.num_hidden_layers) + n_selected * (2 * d * d + 2 * d * vocab)
            self.records.append(
                {
                    "data_and_loop": None if self._last_end is None else m["start"] - self._last_end,
                    "forward": m["forward_end"] - m["start"],
                    "backward": m["backward_end"] - m["forward_end"],
                    "optimizer": end - m["backward_end"],
                    "cells": len(lengths),
                    "tokens": int(lengths.sum()),
                    "padded_tokens": int(batch["attention_mask"].numel()),
                    "selected": n_selected,
                    "train_flops": 3 * forward,
                }
            )
            self._last_end = end

    timer = StepTimer()
    start = time.perf_counter()
    model.train(
        max_epochs=1,
        max_steps=args.warmup + args.steps,
        train_size=1.0,
        validation_size=0.0,
        plan_kwargs={"attention_dropout": True} if args.attention_dropout else None,
        execution=execution,
        callbacks=[timer],
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        num_sanity_val_steps=0,
    )
    total_wall = time.perf_counter() - start
    timed = timer.records[max(args.warmup, 1) :]
    if len(timed) < args.steps:
        msg = f"Only {len(timer.records)} steps ran (expected {args.warmup + args.steps}): use fewer steps."
        raise RuntimeError(msg)
    phases = {name: sum(r[name] for r in timed) for name in ("data_and_loop", "forward", "backward", "optimizer")}
    seconds = sum(phases.values())
    tokens = sum(r["tokens"] for r in timed)
    cells = sum(r["cells"] for r in timed)
    flops = sum(r["train_flops"] for r in timed)
    result = {
        "model_config": args.model,
        "layers": config.num_hidden_layers,
        "hidden_size": d,
        "init": "random",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "precision": "32-true",
        "attention_dropout": bool(args.attention_dropout),
        "token_budget": token_budget,
        "warmup_steps": args.warmup,
        "timed_steps": len(timed),
        "timed_seconds": seconds,
        "seconds_per_step": seconds / len(timed),
        "phase_seconds_per_step": {k: v / len(timed) for k, v in phases.items()},
        "phase_shares": {k: v / seconds for k, v in phases.items()},
        "cells": cells,
        "tokens": tokens,
        "padding_share": 1 - tokens / sum(r["padded_tokens"] for r in timed),
        "mean_length": tokens / cells,
        "tokens_per_s": tokens / seconds,
        "cells_per_s": cells / seconds,
        "train_gflop_per_cell": flops / cells / 1e9,
        "achieved_tflops": flops / seconds / 1e12,
        "matmul_peak_tflops": peak / 1e12,
        "mfu": flops / seconds / peak,
        "mfu_forward_backward_only": flops / (phases["forward"] + phases["backward"]) / peak,
        "train_call_wall_seconds": total_wall,
        "steps": timer.records,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "steps"}, indent=2))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
