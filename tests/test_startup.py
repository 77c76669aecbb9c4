"""Start-up: what needs no model imports no torch, Lightning or scvi-tools (checked in fresh processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import shared_path

HEAVY = ("torch", "lightning", "scvi", "scanpy")
#: What inference may import: torch and transformers, never the training stack (scvi-tools, Lightning) or scanpy.
TRAINING_STACK = ("lightning", "scvi", "scanpy")


def imported_after(code: str, env: dict | None = None) -> dict[str, bool]:
    """Run ``code`` in a fresh interpreter and report which heavy modules it imported."""
    report = f"import json, sys; print('MODULES', json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))"
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\n{report}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env=None if env is None else {**os.environ, **env},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("MODULES "))
    return json.loads(line.removeprefix("MODULES "))


def cli(*args: str) -> str:
    """Run the command line in-process inside the fresh interpreter (typer exits through SystemExit)."""
    call = f"main({list(args)!r})"
    return f"from scgeneformer.cli import main\ntry:\n    {call}\nexcept SystemExit as e:\n    assert not e.code, e"


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("import + list_models()", "import scgeneformer as sgf\nsgf.list_models()"),
        ("settings and Execution", "import scgeneformer as sgf\nsgf.settings.precision = 'bf16'\nsgf.Execution()"),
        ("scgeneformer models", cli("models")),
        ("scgeneformer --help", cli("--help")),
        ("scgeneformer embed --help", cli("embed", "--help")),
        ("scgeneformer train --help", cli("train", "--help")),
        ("scgeneformer encode --help", cli("encode", "--help")),
        ("scgeneformer stats --help", cli("stats", "--help")),
        ("the lazy namespaces", "import scgeneformer as sgf\nfor m in (sgf.tl, sgf.pl, sgf.model): dir(m)"),
    ],
)
def test_no_model_no_torch(name, code):
    loaded = imported_after(code)
    assert not any(loaded.values()), f"{name} imported {[m for m, yes in loaded.items() if yes]}"


def test_lazy_namespaces_list_and_give_every_public_name():
    import scgeneformer as sgf

    for namespace in (sgf, sgf.tl, sgf.pl, sgf.model):
        assert dir(namespace) == sorted(namespace.__all__)
        for name in namespace.__all__:
            assert getattr(namespace, name) is not None
    assert sgf.InferenceModel is sgf.model.InferenceModel
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = sgf.tl.nope


@pytest.fixture
def offline_env(tmp_path) -> dict:
    """Dictionaries from the shared folder's copies, into a fresh cache: no download."""
    return {"SGF_LOCAL_FILES": str(shared_path()), "SGF_CACHE_DIR": str(tmp_path / "cache")}


def test_encode_imports_no_torch(tmp_path, offline_env):
    source, out = str(tmp_path / "x.h5ad"), tmp_path / "encoded.h5ad"
    write = f"import scgeneformer as sgf\nsgf.datasets.pbmc_example().write_h5ad({source!r})\n"
    code = write + cli("encode", source, "-o", str(out), "--vocabulary", "V1", "--gene-id-key", "ensembl_id")
    loaded = imported_after(code, offline_env)
    assert out.is_file() and not any(loaded.values()), loaded


def test_inference_imports_neither_scvi_tools_nor_lightning(tmp_path, offline_env):
    """The first embedding, in the CLI and in Python with an InferenceModel, needs torch and transformers only."""
    checkpoint = str(shared_path("golden", "checkpoints", "tiny_v1"))
    encoded, embedded = str(tmp_path / "encoded.h5ad"), str(tmp_path / "embedded.h5ad")
    python = f"""
import scgeneformer as sgf
adata = sgf.datasets.pbmc_example()
sgf.pp.rank_encode(adata, vocabulary="V1", gene_id_key="ensembl_id")
adata.write_h5ad({encoded!r})
sgf.tl.embed(adata, sgf.InferenceModel.from_pretrained({checkpoint!r}), execution={{"progress_bar": False}})
assert adata.obsm["X_geneformer"].shape == (134, 64)
"""
    loaded = imported_after(python, offline_env)
    assert loaded["torch"] and not any(loaded[m] for m in TRAINING_STACK), loaded
    loaded = imported_after(cli("embed", encoded, "-o", embedded, "-m", checkpoint, "--no-progress"), offline_env)
    assert loaded["torch"] and not any(loaded[m] for m in TRAINING_STACK), loaded


def test_stats_imports_no_torch(tmp_path):
    """``scgeneformer stats`` reads results and computes statistics: no model, so no torch."""
    from helpers import encoded_counts, make_vocabulary, tiny_model

    import scgeneformer as sgf

    vocab = make_vocabulary("V1")
    adata = encoded_counts(vocab, n_obs=6)
    quiet = {"accelerator": "cpu", "progress_bar": False}
    sgf.tl.perturb(adata, tiny_model(vocab), "all", vocabulary=vocab, max_cells=2, execution=quiet)
    results, table = str(tmp_path / "results.h5ad"), tmp_path / "stats.csv"
    adata.write_h5ad(results)
    loaded = imported_after(cli("stats", results, "-o", str(table), "--mode", "aggregate_data"))
    assert table.is_file() and not loaded["torch"] and not loaded["scvi"], loaded
