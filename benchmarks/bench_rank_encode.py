"""Benchmark ``sgf.pp.rank_encode``: throughput and peak memory, in memory and on backed h5ad files.

The 2,700 cells of ``pbmc3k_annotated.h5ad`` are replicated to N cells. Every measurement runs in a fresh
subprocess, so that ``ru_maxrss`` (the peak resident set size) belongs to that measurement alone. Each subprocess:

1. imports scgeneformer and anndata, and records its RSS ("RSS after imports");
2. builds the replicated AnnData in memory, or opens the h5ad file written once beforehand with ``backed="r"``
   or ``backed="r+"`` (the ``r+`` cases open a fresh copy of the file, so each run starts clean), and records the
   RSS ("RSS before call");
3. times ``rank_encode(adata, vocabulary=<folder>, gene_id_key="ensembl_id")`` and records the peak RSS right after;
4. times a plain read of the same matrix, chunk by chunk as rank_encode reads it (``X[i:i + chunk_size]``,
   converted to CSR), and reports rank_encode time / read time.

The medians over the repeats are printed as a table and written, with every single run, to
``benchmarks/results/rank_encode.json``.

Usage (from the project root)::

    python benchmarks/bench_rank_encode.py [--cells 50000 200000] [--repeats 3] [--quick]

Shared data are found in ``$SGF_SHARED_DIR``, by default ``<project root>/../shared``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
SHARED_DIR = Path(os.environ.get("SGF_SHARED_DIR", ROOT / ".." / "shared"))
DATASET = SHARED_DIR / "data" / "datasets" / "pbmc3k_annotated.h5ad"
VOCABULARIES = {
    "V2": SHARED_DIR / "data" / "dictionaries" / "V2_gc104M",
    "V1": SHARED_DIR / "data" / "dictionaries" / "V1_gc30M",
}
GENE_ID_KEY = "ensembl_id"
RANKS_LAYER = "geneformer_ranks"
WORKER_TIMEOUT_S = 600


# ---------------------------------------------------------------------------------------------------------------
# Worker side: runs in a fresh subprocess, prints one line "RESULT <json>".
# ---------------------------------------------------------------------------------------------------------------
def _peak_rss_mib() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def _current_rss_mib() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 2**10
    except OSError:
        pass
    return None


def replicate_pbmc3k(n_cells: int):
    """The PBMC 3k AnnData with its cells stacked (X rows repeated) up to ``n_cells``, with unique obs_names."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    source = ad.read_h5ad(DATASET)
    X = sp.csr_matrix(source.X)
    n_source = X.shape[0]
    n_full, remainder = divmod(n_cells, n_source)
    blocks = [X] * n_full + ([X[:remainder]] if remainder else [])
    stacked = sp.vstack(blocks, format="csr")
    source_names = source.obs_names.to_numpy()
    names = [f"{source_names[i % n_source]}-{i // n_source}" for i in range(n_cells)]
    var = source.var.copy()
    del source, X, blocks
    adata = ad.AnnData(X=stacked, obs=pd.DataFrame(index=pd.Index(names, dtype=object)), var=var)
    assert adata.obs_names.is_unique
    assert adata.X.dtype == np.int32
    return adata


def _read_all_chunks(X, chunk_size: int) -> int:
    """Read ``X`` chunk by chunk exactly as rank_encode's reader does; returns the number of stored values."""
    import numpy as np
    import scipy.sparse as sp

    nnz = 0
    for start in range(0, X.shape[0], chunk_size):
        chunk = X[start : start + chunk_size]
        chunk = sp.csr_matrix(chunk) if sp.issparse(chunk) else sp.csr_matrix(np.asarray(chunk))
        nnz += chunk.nnz
    return nnz


def run_worker(spec: dict) -> dict:
    t_import = time.perf_counter()
    import anndata as ad

    import scgeneformer as sgf

    import_s = time.perf_counter() - t_import
    result = {
        "rss_after_imports_mib": _current_rss_mib(),
        "peak_rss_after_imports_mib": _peak_rss_mib(),
        "import_s": import_s,
    }

    t_prepare = time.perf_counter()
    if spec["mode"] == "memory":
        adata = replicate_pbmc3k(spec["n_cells"])
    else:
        adata = ad.read_h5ad(spec["path"], backed=spec["mode"].removeprefix("backed_"))
    result["prepare_s"] = time.perf_counter() - t_prepare
    result["rss_before_call_mib"] = _current_rss_mib()
    result["peak_rss_before_call_mib"] = _peak_rss_mib()
    assert adata.n_obs == spec["n_cells"], (adata.n_obs, spec["n_cells"])

    vocabulary = str(VOCABULARIES[spec["vocabulary"]])
    t0 = time.perf_counter()
    sgf.pp.rank_encode(
        adata,
        vocabulary=vocabulary,
        gene_id_key=GENE_ID_KEY,
        chunk_size=spec["chunk_size"],
        n_jobs=spec["n_jobs"],
    )
    encode_s = time.perf_counter() - t0
    result["peak_rss_mib"] = _peak_rss_mib()
    result["rss_after_call_mib"] = _current_rss_mib()

    # Sanity checks, outside the timings.
    summary = adata.uns["geneformer"]
    result["n_cells_encoded"] = summary["n_cells_encoded"]
    result["mean_n_tokens"] = float(adata.obs["geneformer_n_tokens"].mean())
    assert summary["n_cells_encoded"] == spec["n_cells"], summary
    if spec["mode"] == "backed_r+":
        assert f"layers/{RANKS_LAYER}" in adata.file._file, "the rank layer was not written into the file"

    # Read-only baseline, same matrix, same chunking, same process.
    t0 = time.perf_counter()
    nnz = _read_all_chunks(adata.X, spec["chunk_size"])
    read_s = time.perf_counter() - t0
    result["nnz"] = int(nnz)
    if adata.isbacked:
        adata.file.close()

    # The call above includes loading the vocabulary pickles (once per process): time that part on its own.
    t0 = time.perf_counter()
    sgf.Vocabulary.from_folder(vocabulary)
    result["vocabulary_load_s"] = time.perf_counter() - t0

    result.update(
        encode_s=encode_s,
        read_s=read_s,
        cells_per_s=spec["n_cells"] / encode_s,
        ratio_to_read=encode_s / read_s,
        n_jobs_used=spec["n_jobs"] or len(os.sched_getaffinity(0)),
    )
    return result


def run_writer(spec: dict) -> dict:
    """Write the replicated AnnData to ``spec["path"]`` (uncompressed h5ad)."""
    adata = replicate_pbmc3k(spec["n_cells"])
    t0 = time.perf_counter()
    adata.write_h5ad(spec["path"])
    return {"write_s": time.perf_counter() - t0, "size_mib": os.path.getsize(spec["path"]) / 2**20}


# ---------------------------------------------------------------------------------------------------------------
# Driver side.
# ---------------------------------------------------------------------------------------------------------------
def _spawn(spec: dict) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        msg = f"worker failed (exit {proc.returncode}) for {spec}"
        raise RuntimeError(msg)
    return json.loads(lines[-1].removeprefix("RESULT "))


def _warm_page_cache(path: Path) -> None:
    """Read a file once so that every backed run starts from the OS page cache, not from a cold disk."""
    with open(path, "rb") as f:
        while f.read(64 * 2**20):
            pass


def _cases(cells: list[int]) -> list[dict]:
    cases = []
    for n_cells in cells:
        for mode in ("memory", "backed_r", "backed_r+"):
            cases.append({"n_cells": n_cells, "mode": mode, "vocabulary": "V2"})
    cases.append({"n_cells": max(cells), "mode": "memory", "vocabulary": "V1"})
    return cases


MEDIAN_FIELDS = (
    "cells_per_s",
    "encode_s",
    "read_s",
    "ratio_to_read",
    "peak_rss_mib",
    "rss_before_call_mib",
    "peak_rss_before_call_mib",
    "rss_after_imports_mib",
    "vocabulary_load_s",
)


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _print_table(summary: list[dict], repeats: int) -> None:
    header = (
        f"{'cells':>8} {'case':<10} {'vocab':<5} {'cells/s':>9} {'encode s':>9} {'read s':>7} {'enc/read':>9} "
        f"{'peak RSS':>9} {'RSS pre':>8} {'RSS imp':>8}"
    )
    print(f"\nrank_encode, median of {repeats} run(s), each in a fresh process (RSS in MiB)")
    print("peak RSS = ru_maxrss of the process (includes the in-memory data); RSS pre = RSS just before the call;")
    print("RSS imp = RSS after imports; enc/read = rank_encode time / time to read the same chunks\n")
    print(header)
    print("-" * len(header))
    for row in summary:
        print(
            f"{row['n_cells']:>8} {row['mode']:<10} {row['vocabulary']:<5} {row['cells_per_s']:>9.0f} "
            f"{row['encode_s']:>9.2f} {row['read_s']:>7.2f} {row['ratio_to_read']:>9.1f} "
            f"{row['peak_rss_mib']:>9.0f} {row['rss_before_call_mib']:>8.0f} {row['rss_after_imports_mib']:>8.0f}"
        )


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("scgeneformer", "anndata", "numpy", "scipy", "h5py", "pandas"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[50_000, 200_000], help="numbers of cells")
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process runs per case (median reported)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 20,000 cells, 1 repeat")
    parser.add_argument("--chunk-size", type=int, default=2048, help="rank_encode chunk_size")
    parser.add_argument("--n-jobs", type=int, default=None, help="rank_encode n_jobs (default: all cores)")
    parser.add_argument("--tmpdir", default=None, help="where the temporary h5ad files go (default: system temp)")
    parser.add_argument("--output", default=str(RESULTS_DIR / "rank_encode.json"), help="JSON results file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker is not None:
        spec = json.loads(args.worker)
        result = run_writer(spec) if spec["mode"] == "write" else run_worker(spec)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    if args.quick:
        args.cells, args.repeats = [20_000], 1
    for path in (DATASET, *VOCABULARIES.values()):
        if not path.exists():
            parser.error(f"{path} not found; set SGF_SHARED_DIR to the shared data folder")

    cases = _cases(sorted(set(args.cells)))
    runs, summary, files = [], [], {}
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="sgf_bench_rank_encode_", dir=args.tmpdir))
    try:
        for n_cells in sorted(set(args.cells)):
            path = tmp / f"pbmc3k_x{n_cells}.h5ad"
            info = _spawn({"mode": "write", "n_cells": n_cells, "path": str(path)})
            files[n_cells] = {**info, "path": path}
            print(f"wrote {n_cells:,} cells: {info['size_mib']:.0f} MiB in {info['write_s']:.1f} s", flush=True)

        for case in cases:
            per_case = []
            for repeat in range(args.repeats):
                spec = {**case, "chunk_size": args.chunk_size, "n_jobs": args.n_jobs}
                if case["mode"] != "memory":
                    source = files[case["n_cells"]]["path"]
                    if case["mode"] == "backed_r+":
                        target = tmp / f"work_{case['n_cells']}.h5ad"
                        shutil.copyfile(source, target)  # each r+ run starts from a file without the rank layer
                    else:
                        target = source
                    _warm_page_cache(target)
                    spec["path"] = str(target)
                result = _spawn(spec)
                per_case.append(result)
                runs.append({**case, "repeat": repeat, **result})
                print(
                    f"  {case['n_cells']:>7} {case['mode']:<10} {case['vocabulary']} run {repeat + 1}/{args.repeats}: "
                    f"{result['cells_per_s']:,.0f} cells/s, {result['encode_s']:.2f} s, "
                    f"peak RSS {result['peak_rss_mib']:,.0f} MiB",
                    flush=True,
                )
            summary.append({**case, **{k: _median([r.get(k) for r in per_case]) for k in MEDIAN_FIELDS}})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    _print_table(summary, args.repeats)
    total_s = time.perf_counter() - started
    print(f"\ntotal benchmark time {total_s / 60:.1f} min")

    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "rank_encode",
        "dataset": "pbmc3k_annotated.h5ad replicated",
        "vocabulary_folders": {k: f"data/dictionaries/{v.name}" for k, v in VOCABULARIES.items()},
        "gene_id_key": GENE_ID_KEY,
        "chunk_size": args.chunk_size,
        "n_jobs": args.n_jobs,
        "repeats": args.repeats,
        "cells": sorted(set(args.cells)),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "memory_gib": (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
            if hasattr(os, "sysconf")
            else None,
        },
        "versions": _versions(),
        "files": {str(n): {k: v for k, v in f.items() if k != "path"} for n, f in files.items()},
        "units": {"rss": "MiB (2**20 bytes)", "time": "seconds"},
        "summary_median": summary,
        "runs": runs,
        "total_s": total_s,
    }
    output.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"results written to {output.relative_to(ROOT) if output.is_relative_to(ROOT) else output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
