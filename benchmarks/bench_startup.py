"""Start-up cost: time from process start to a result, in fresh processes, for the CLI and the Python API.

Measured per case (median of ``--runs`` fresh processes, after one warm-up that fills the OS file cache):

- ``import scgeneformer; sgf.list_models()`` and ``scgeneformer models`` / ``scgeneformer --help``: no model needed;
  also reports whether torch, Lightning, scvi-tools or scanpy were imported (``sys.modules`` at exit).
- ``scgeneformer embed``: the bundled PBMC example, encoded beforehand, embedded with the small test checkpoint
  (``shared/golden/checkpoints/tiny_v1``: the published weights cannot be downloaded here).
- Python: import, rank-encode the bundled example, load that checkpoint, embed; with ``GeneformerModel`` (the
  training class, which imports scvi-tools) and with ``InferenceModel`` (inference only; trees without it use
  ``GeneformerModel``).

``--src`` names a source tree (its ``src`` folder goes first on ``PYTHONPATH``), so that two versions can be measured
in one run on the same machine::

    python benchmarks/bench_startup.py --src ../before --src .
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SGF_SHARED", ROOT.parent / "shared"))
CHECKPOINT = SHARED / "golden" / "checkpoints" / "tiny_v1"

WATCHED = ["torch", "lightning", "scvi", "scanpy", "transformers"]
REPORT_MODULES = f"import sys, json; print('MODULES', json.dumps({{m: m in sys.modules for m in {WATCHED!r}}}))"

PY_EMBED = f"""
import scgeneformer as sgf
adata = sgf.datasets.pbmc_example()
sgf.pp.rank_encode(adata, vocabulary="V1", gene_id_key="ensembl_id")
model = MODEL_CLASS.from_pretrained({str(CHECKPOINT)!r})
sgf.tl.embed(adata, model, execution={{"progress_bar": False}})
assert adata.obsm["X_geneformer"].shape[0] == adata.n_obs
"""
#: The Python case with the training class, and with the inference-only class in trees that have it (issue 22).
PY_TRAINING_CLASS = PY_EMBED.replace("MODEL_CLASS", "sgf.GeneformerModel")
PY_INFERENCE_CLASS = PY_EMBED.replace(
    "MODEL_CLASS", '(sgf.InferenceModel if "InferenceModel" in dir(sgf) else sgf.GeneformerModel)'
)


def timed(command: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{command} failed:\n{done.stderr[-2000:]}")
    return elapsed, done.stdout


def modules_after(code: str, env: dict) -> dict:
    _, out = timed([sys.executable, "-c", code + "\n" + REPORT_MODULES], env)
    line = next(x for x in out.splitlines() if x.startswith("MODULES "))
    return json.loads(line[len("MODULES ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", action="append", help="source tree(s) to measure (default: the installed package)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", action="append", help="measure only the cases whose name contains this text")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sgf-startup-"))
    base_env = os.environ | {"SGF_CACHE_DIR": str(work / "cache"), "SGF_LOCAL_FILES": str(SHARED / "data")}
    encoded = work / "encoded.h5ad"
    trees = args.src or [None]
    results = {}
    for tree in trees:
        env = dict(base_env)
        if tree is not None:
            env["PYTHONPATH"] = str(Path(tree).resolve() / "src") + os.pathsep + env.get("PYTHONPATH", "")
        label = str(tree or "installed")
        # the encoded input of the CLI case, made with this tree (not timed)
        timed(
            [
                sys.executable,
                "-c",
                "import scgeneformer as sgf; a = sgf.datasets.pbmc_example(); "
                "sgf.pp.rank_encode(a, vocabulary='V1', gene_id_key='ensembl_id'); "
                f"a.write_h5ad({str(encoded)!r})",
            ],
            env,
        )
        cli = [sys.executable, "-m", "scgeneformer"]
        cases = {
            "python: import + list_models()": [sys.executable, "-c", "import scgeneformer as sgf; sgf.list_models()"],
            "cli: scgeneformer models": [*cli, "models"],
            "cli: scgeneformer --help": [*cli, "--help"],
            "cli: scgeneformer embed (first embedding)": [
                *cli,
                "embed",
                str(encoded),
                "-o",
                str(work / "embedded.h5ad"),
                "-m",
                str(CHECKPOINT),
                "--no-progress",
            ],
            "python: import, encode, load, embed (GeneformerModel)": [sys.executable, "-c", PY_TRAINING_CLASS],
            "python: import, encode, load, embed (InferenceModel)": [sys.executable, "-c", PY_INFERENCE_CLASS],
        }
        if args.only:
            cases = {name: command for name, command in cases.items() if any(text in name for text in args.only)}
        results[label] = {}
        for name, command in cases.items():
            timed(command, env)  # warm-up
            times = [timed(command, env)[0] for _ in range(args.runs)]
            results[label][name] = statistics.median(times)
        results[label]["imports after list_models()"] = modules_after(
            "import scgeneformer as sgf; sgf.list_models()", env
        )
    names = [n for n in next(iter(results.values())) if not n.startswith("imports")]
    print(f"median of {args.runs} fresh processes (s); {os.cpu_count()} CPUs")
    print(f"{'case':<56}" + "".join(f"{label[-24:]:>26}" for label in results))
    for name in names:
        print(f"{name:<56}" + "".join(f"{results[label][name]:>26.2f}" for label in results))
    for label, measured in results.items():
        print(f"{label}: modules imported by list_models(): {measured['imports after list_models()']}")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "bench_startup.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
