"""Reliability of perturbation stores (issue 20): exclusive creation, damaged manifests, leftovers of killed runs."""

from __future__ import annotations

import json
import os
import time

import pandas as pd
import pytest

from scgeneformer.tl._perturb._store import PerturbationStore

IDENTITY = {"parameters": {"perturb": "delete"}, "model": "abc", "cells": "def"}


def test_a_second_screen_on_the_same_store_is_refused(tmp_path):
    """Item 5: the manifest is created exclusively; a screen racing in with another identity is refused.

    Deterministic race: the second "process" passes the is-file check before the first creates the manifest
    (it is held at that fixed point by calling the creation step itself after the first run's creation).
    """
    out = tmp_path / "screen"
    other = {**IDENTITY, "cells": "other"}
    # both found no manifest; the first creates it, the second creates afterwards from its stale view
    out.mkdir()
    PerturbationStore._create(out, out / "manifest.json", IDENTITY, 3)
    PerturbationStore._create(out, out / "manifest.json", other, 3)
    assert json.loads((out / "manifest.json").read_text())["identity"] == IDENTITY  # the winner's manifest stays
    assert not [p for p in out.iterdir() if p.name.startswith(".manifest")]  # no temporary files left
    with pytest.raises(ValueError, match="different perturbation run"):
        PerturbationStore.open(out, other, 3)
    # the processes of one distributed run (same identity) share the store
    assert PerturbationStore.open(out, IDENTITY, 3).manifest["identity"] == IDENTITY


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        '{"format": "scgeneformer-perturbation-store/1"}',
        "[1, 2]",
        '"text"',
        '{"format": "scgeneformer-perturbation-store/1", "identity": [], "n_parts": 2}',
        "\udcff",
    ],
)
def test_a_damaged_manifest_gives_one_clear_error(tmp_path, content):
    """Item 11: JSONDecodeError, KeyError, TypeError, AttributeError become one error naming the store."""
    out = tmp_path / "screen"
    PerturbationStore.open(out, IDENTITY, 2)
    (out / "manifest.json").write_bytes(content.encode("utf-8", "surrogateescape"))
    for attempt in (lambda: PerturbationStore(out), lambda: PerturbationStore.open(out, IDENTITY, 2)):
        with pytest.raises(ValueError, match="damaged manifest.json") as error:
            attempt()
        assert str(out) in str(error.value) and "delete the folder" in str(error.value)


def test_leftover_temporary_parts_are_cleaned_on_resume(tmp_path):
    """Item 18 (last): temporary part files of a killed run are removed on resume; other files are kept."""
    out = tmp_path / "screen"
    store = PerturbationStore.open(out, IDENTITY, 2)
    store.write_part(0, pd.DataFrame({"cell": ["a"], "cosine": [0.5]}))
    parts = out / "parts"
    stale = parts / ".part-000001.parquet.tmp-0123456789ab"
    fresh = parts / ".part-000001.parquet.tmp-ba9876543210"  # being written by another process of the run
    foreign = parts / "notes.txt"
    for file in (stale, fresh, foreign):
        file.write_bytes(b"partial")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(foreign, (old, old))
    resumed = PerturbationStore.open(out, IDENTITY, 2)
    assert not stale.exists() and fresh.exists() and foreign.exists()
    assert resumed.done_parts() == {0}


from test_perturb_store import screen  # noqa: E402,F401  (the fixture: data, a saved model, options)


@pytest.mark.filterwarnings("ignore:Writing zarr v2 data:UserWarning")
def test_resume_fingerprints_tokens_and_weights_not_paths(screen):  # noqa: F811
    """Items 4 and 15: re-encoded cells (same names and lengths) are refused; the same weights from another path
    resume."""
    import shutil

    import scgeneformer as sgf
    from scgeneformer._data._encoding import encoding_keys

    root, adata, model, options = screen
    sgf.tl.perturb(adata, model, "all", max_cells=4, out=root / "store", **options)
    shutil.copytree(root / "model", root / "node-local")
    copied = sgf.GeneformerModel.load(root / "node-local")
    sgf.tl.perturb(adata, copied, "all", max_cells=4, out=root / "store", **options)  # identical weights: resumes
    reencoded = adata.copy()
    column = encoding_keys("geneformer").token
    tokens = reencoded.var[column].to_numpy().copy()
    tokens[[0, 1, 2, 3]] = tokens[[3, 2, 1, 0]]  # other token ids, same names and lengths
    reencoded.var[column] = tokens
    with pytest.raises(ValueError, match="different perturbation run.*tokens"):
        sgf.tl.perturb(reencoded, model, "all", max_cells=4, out=root / "store", **options)


def test_results_name_their_store_absolutely_and_are_verified(tmp_path, monkeypatch):
    """Item 6: the recorded path is absolute with a run identity; another store at that path is a clear error."""
    from scgeneformer.tl._perturb._results import PerturbationResults

    monkeypatch.chdir(tmp_path)
    store = PerturbationStore.open("screen", IDENTITY, 1)
    results = {"path": str(store.path.resolve()), "run": store.run_id, "genes": None, "params": {}}
    assert PerturbationResults.__new__(PerturbationResults) is not None
    reader = PerturbationResults.__new__(PerturbationResults)
    reader.results = results
    assert reader.store.path == store.path.resolve()
    import shutil

    shutil.rmtree("screen")
    PerturbationStore.open("screen", {**IDENTITY, "cells": "other"}, 1)
    with pytest.raises(ValueError, match="holds another run"):
        _ = reader.store
