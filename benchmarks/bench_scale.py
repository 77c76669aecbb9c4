"""Past one process and past memory: the out-of-core loader, embedding a 1M-cell corpus, and distributed, streamed,
resumable perturbation screens.

Subcommands (each writes ``benchmarks/results/scale_<name>.json``, git-ignored):

``corpus``
    Build the 1,000,000-cell encoded corpus: the PBMC 3k cells, V1-encoded, replicated into ``--files`` backed
    ``.h5ad`` files (default 10 × 100,000 cells, ~5 GB) in ``benchmarks/results/corpus_1m``.
``loader``
    Read the corpus from disk into padded batches as ``model.train`` does (``sgf.read_corpus(...).dataloader()``:
    shuffled blocks, length-grouped batches under the token budget, ``--workers`` worker processes) for
    ``--seconds``; cells/s, tokens/s, and the peak memory
    (PSS) of the process tree, sampled every 0.2 s. ``--baseline`` shuffles cells over the whole corpus instead of
    in blocks (random access per batch, as a map-style loader over the files does), for comparison.
``embed``
    ``sgf.tl.embed`` of the corpus with the Geneformer-V1-10M architecture's first layer only (``layer=1``), for
    ``--cells`` cells (the first ones) or all; resident memory sampled through the run.
``perturb``
    Delete every gene, one at a time, of ``--cells`` PBMC cells (each cut to its ``--max-genes`` top-ranked genes),
    V1-10M architecture, with gene shifts; ``--processes 1|2`` (Lightning DDP on CPU, one thread per process),
    ``--out`` to stream to a store; ``--kill-after S`` kills the run (SIGKILL) after S seconds and resumes it.
    ``--part-tokens`` (default 16,384, about one cut cell) sets the size of the parts the cells are run, shared out
    and stored in; in a full-length screen each cell has ~1M perturbed tokens and is a part of its own.

Usage::

    python benchmarks/bench_scale.py corpus
    python benchmarks/bench_scale.py loader --workers 0 --seconds 60
    python benchmarks/bench_scale.py embed --cells 20000
    python benchmarks/bench_scale.py perturb --processes 2 --out
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np

SCRIPT_STARTED = time.time()
ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SGF_SHARED_DIR", ROOT.parent / "shared"))
RESULTS = ROOT / "benchmarks" / "results"
CORPUS = RESULTS / "corpus_1m"
DICTIONARIES = SHARED / "data" / "dictionaries" / "V1_gc30M"


class MemorySampler:
    """Peak and time course of the memory of this process and its children (data-loader workers).

    Proportional set size (PSS): pages shared between processes (a forked worker shares its parent's memory until
    either writes to it) count once in total, split among the sharers; RSS would count them in every process.
    """

    def __init__(self, interval: float = 0.2) -> None:
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.peak = 0.0
        self.trace: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.start = time.perf_counter()

    def rss_mib(self) -> float:
        import psutil

        total = 0
        for process in [self.process, *self.process.children(recursive=True)]:
            try:
                total += process.memory_full_info().pss
            except psutil.Error:
                pass
        return total / 2**20

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self.rss_mib()
            self.peak = max(self.peak, rss)
            self.trace.append((time.perf_counter() - self.start, rss))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def encoded_pbmc(max_genes: int | None = None):
    import anndata as ad
    import scipy.sparse as sp

    import scgeneformer as sgf

    adata = ad.read_h5ad(SHARED / "data" / "datasets" / "pbmc3k_annotated.h5ad")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the note on genes outside the vocabulary
        sgf.pp.rank_encode(adata, vocabulary=DICTIONARIES, gene_id_key="ensembl_id")
    if max_genes:
        ranks = sp.csr_matrix(adata.layers["geneformer_ranks"])
        ranks.data[ranks.data > max_genes] = 0
        ranks.eliminate_zeros()
        adata.layers["geneformer_ranks"] = ranks
        adata.obs["geneformer_n_tokens"] = np.minimum(adata.obs["geneformer_n_tokens"].to_numpy(), max_genes)
    return adata


# -- corpus ---------------------------------------------------------------------------------------------------------
def build_corpus(args) -> dict:
    import anndata as ad
    import scipy.sparse as sp

    pbmc = encoded_pbmc()
    ranks = sp.csr_matrix(pbmc.layers["geneformer_ranks"]).astype(np.int16)
    per_file = args.cells // args.files
    CORPUS.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for f in range(args.files):
        rows = np.arange(f * per_file, (f + 1) * per_file) % pbmc.n_obs
        part = ad.AnnData(
            obs=pbmc.obs.iloc[rows][["cell_type", "geneformer_n_tokens"]].set_axis(
                [f"c{i}" for i in range(f * per_file, (f + 1) * per_file)]
            ),
            var=pbmc.var[["geneformer_token"]],
            uns={"geneformer": pbmc.uns["geneformer"]},
            layers={"geneformer_ranks": ranks[rows]},
        )
        part.write_h5ad(CORPUS / f"part-{f:02d}.h5ad")
        print(f"wrote part {f + 1}/{args.files}", flush=True)
    size = sum(p.stat().st_size for p in CORPUS.glob("*.h5ad"))
    return {"files": args.files, "cells": per_file * args.files, "bytes": size, "seconds": time.perf_counter() - start}


# -- loader ---------------------------------------------------------------------------------------------------------
def loader(args) -> dict:
    import scgeneformer as sgf

    paths = sorted(CORPUS.glob("*.h5ad"))
    opened = time.perf_counter()
    corpus = sgf.read_corpus(paths)
    opened = time.perf_counter() - opened
    if args.baseline:
        return random_access_baseline(args, paths, corpus)
    data = corpus.dataloader(token_budget=args.token_budget, num_workers=args.workers)
    n_cells = n_tokens = n_padded = n_batches = 0
    with MemorySampler() as memory:
        start = time.perf_counter()
        for batch in data:
            n_batches += 1
            n_cells += len(batch["cells"])
            n_tokens += int(batch["attention_mask"].sum())
            n_padded += batch["input_ids"].numel()
            if time.perf_counter() - start > args.seconds:
                break
        seconds = time.perf_counter() - start
    return {
        "workers": args.workers,
        "token_budget": args.token_budget,
        "open_seconds": opened,
        "seconds": seconds,
        "batches": n_batches,
        "cells": n_cells,
        "cells_per_s": n_cells / seconds,
        "tokens_per_s": n_tokens / seconds,
        "padding_share": 1 - n_tokens / max(n_padded, 1),
        "peak_rss_mib": memory.peak,
    }


def random_access_baseline(args, paths, corpus) -> dict:
    """The same loader without blocks: cells shuffled over the whole corpus, each batch read from anywhere.

    This is what a map-style loader over the files does (anndata's ``AnnLoader`` over an ``AnnCollection`` reads rows
    per batch the same way; it cannot open these files at all, which have no ``X``, and anndata's backed mode would
    load each file's rank layer into memory: ``backed_open_mib``).
    """
    import anndata as ad

    with MemorySampler() as opening:
        backed = ad.read_h5ad(paths[0], backed="r")
        layer_mib = backed.layers["geneformer_ranks"].data.nbytes / 2**20  # loaded although the file is backed
        del backed
    # the same loader with cells shuffled over the whole corpus (no blocks): each batch reads its cells anywhere
    import torch

    from scgeneformer._compute._batching import CellPositions, LengthGroupedBatchSampler, SequenceCollator

    cells = corpus.encoded_cells()
    sampler = LengthGroupedBatchSampler(cells, corpus.lengths[cells], token_budget=args.token_budget, seed=0)
    data = torch.utils.data.DataLoader(
        CellPositions(corpus.n_cells), batch_sampler=sampler, collate_fn=SequenceCollator(corpus)
    )
    n_cells = 0
    with MemorySampler() as memory:
        start = time.perf_counter()
        for batch in data:
            n_cells += len(batch["cells"])
            if time.perf_counter() - start > args.seconds:
                break
        seconds = time.perf_counter() - start
    return {
        "baseline": "random access (cells shuffled over the whole corpus)",
        "cells": n_cells,
        "seconds": seconds,
        "cells_per_s": n_cells / seconds,
        "peak_rss_mib": memory.peak,
        "backed_open_peak_mib": opening.peak,
        "backed_layer_data_mib_per_file": layer_mib,
    }


# -- embed ----------------------------------------------------------------------------------------------------------
def embed(args) -> dict:
    import torch

    import scgeneformer as sgf

    checkpoint = sgf.model.get_checkpoint("Geneformer-V1-10M")
    torch.manual_seed(0)
    model = sgf.GeneformerModel(bert_config=checkpoint.config, vocabulary="V1")
    corpus = sgf.read_corpus(sorted(CORPUS.glob("*.h5ad")))
    n = corpus.n_cells if args.cells is None else args.cells
    with MemorySampler(interval=1.0) as memory:
        before = memory.rss_mib()
        start = time.perf_counter()
        embeddings = model.get_embeddings(
            corpus, np.arange(n), layer=1, execution={"accelerator": "cpu", "progress_bar": False}
        )
        seconds = time.perf_counter() - start
    assert np.isfinite(embeddings.cells).all()
    trace = memory.trace
    return {
        "cells": n,
        "seconds": seconds,
        "cells_per_s": n / seconds,
        "extrapolated_1m_hours": corpus.n_cells / (n / seconds) / 3600,
        "rss_before_mib": before,
        "peak_rss_mib": memory.peak,
        "output_mib": embeddings.cells.nbytes / 2**20,
        "rss_at_quarters_mib": [trace[int(q * (len(trace) - 1))][1] for q in (0.25, 0.5, 0.75, 1.0)],
    }


# -- perturb --------------------------------------------------------------------------------------------------------
def perturb(args) -> dict:
    import torch

    import scgeneformer as sgf
    from scgeneformer.tl._perturb import _planning

    # A full-length cell (~1,000 genes) is one part of its own; cut to 128 genes, ~60 cells would share one. Parts
    # of one cell keep this scaled-down screen as finely divisible (load balance, resume) as a real one.
    _planning.CHUNK_TOKENS = args.part_tokens
    if args.processes > 1 or args.threads:
        torch.set_num_threads(args.threads or 1)
    checkpoint = sgf.model.get_checkpoint("Geneformer-V1-10M")
    torch.manual_seed(0)
    model = sgf.GeneformerModel(bert_config=checkpoint.config, vocabulary="V1")
    adata = encoded_pbmc(args.max_genes)
    execution = {"accelerator": "cpu", "progress_bar": False}
    if args.processes > 1:
        execution |= {"devices": args.processes, "strategy": "ddp"}
    store = RESULTS / "scale_store" if args.out else None
    options = {"max_cells": args.cells, "gene_shifts": True, "vocabulary": DICTIONARIES, "execution": execution}
    with MemorySampler() as memory:
        start, started_at = time.perf_counter(), time.time()
        sgf.tl.perturb(adata, model, "all", out=store, **options)
        seconds = time.perf_counter() - start
    rank = int(os.environ.get("LOCAL_RANK", 0))
    if rank:  # when the second process reached perturb (it starts once the first one launches it)
        Path(args.output or RESULTS / "scale_perturb.json").with_suffix(f".rank{rank}.json").write_text(
            json.dumps({"rank": rank, "script_started_at": SCRIPT_STARTED, "perturb_started_at": started_at})
        )
    result = adata.uns["geneformer_perturb"]
    rows = result["n_rows"] if store else len(result["cells"])
    return {
        "rank": rank,
        "script_started_at": SCRIPT_STARTED,
        "perturb_started_at": started_at,
        "processes": args.processes,
        "threads_per_process": torch.get_num_threads(),
        "out": bool(store),
        "cells": args.cells,
        "max_genes": args.max_genes,
        "perturbations": result["params"]["n_perturbations"],
        "rows": int(rows),
        "seconds": seconds,
        "cells_per_s": args.cells / seconds,
        "peak_rss_mib": memory.peak,
    }


def kill_and_resume(args) -> dict:
    """Run the screen with ``--out`` in a child process, SIGKILL it after ``--kill-after`` s, then resume it."""
    import shutil

    store = RESULTS / "scale_store"
    shutil.rmtree(store, ignore_errors=True)
    command = [sys.executable, __file__, "perturb", f"--cells={args.cells}", f"--max-genes={args.max_genes}", "--out"]
    command += [f"--processes={args.processes}", f"--part-tokens={args.part_tokens}"]
    command += [f"--threads={args.threads}"] if args.threads else []
    command += ["--output", str(RESULTS / "scale_perturb_killed.json")]
    start = time.perf_counter()
    child = subprocess.Popen(command, start_new_session=True)
    time.sleep(args.kill_after)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    killed_after = time.perf_counter() - start
    n_parts = json.loads((store / "manifest.json").read_text())["n_parts"]
    done = len(list((store / "parts").glob("part-*.parquet")))
    resume = subprocess.run([*command[:-2], "--output", str(RESULTS / "scale_perturb_resumed.json")], check=True)
    resumed = json.loads((RESULTS / "scale_perturb_resumed.json").read_text())
    return {
        "killed_after_s": killed_after,
        "parts_done_at_kill": done,
        "parts": n_parts,
        "resume_seconds": resumed["seconds"],
        "returncode": resume.returncode,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("corpus")
    p.add_argument("--cells", type=int, default=1_000_000)
    p.add_argument("--files", type=int, default=10)
    p = sub.add_parser("loader")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--token-budget", type=int, default=32_768, help="padded tokens per batch (GPU training default)")
    p.add_argument("--baseline", action="store_true", help="random access instead of shuffled blocks")
    p = sub.add_parser("embed")
    p.add_argument("--cells", type=int, default=None)
    p = sub.add_parser("perturb")
    p.add_argument("--cells", type=int, default=200)
    p.add_argument("--max-genes", type=int, default=128)
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads per process (default: 1 with DDP)")
    p.add_argument("--out", action="store_true", help="stream the results to a store")
    p.add_argument("--kill-after", type=float, default=None, help="kill after this many seconds, then resume")
    p.add_argument("--part-tokens", type=int, default=16_384, help="perturbed tokens per part (about one cell)")
    for p in sub.choices.values():
        p.add_argument("--output", default=None)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    runs = {"corpus": build_corpus, "loader": loader, "embed": embed, "perturb": perturb}
    if args.command == "perturb" and args.kill_after:
        result = kill_and_resume(args)
    else:
        result = runs[args.command](args)
    result["cpu_count"] = os.cpu_count()
    output = Path(args.output or RESULTS / f"scale_{args.command}.json")
    if int(os.environ.get("LOCAL_RANK", 0)) == 0:
        output.write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2), flush=True)


if __name__ == "__main__":
    main()
