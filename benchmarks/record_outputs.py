"""pytest plugin: record every output of the public pp/tl calls of a test run, to compare two versions bit by bit.

Used to show that a restructuring changes no result::

    SGF_RECORD_OUT=before.pkl PYTHONPATH=benchmarks:<old tree>/src python -m pytest -p record_outputs \
        tests/test_golden_tokens.py tests/test_golden_embeddings.py tests/test_golden_perturb.py
    SGF_RECORD_OUT=after.pkl PYTHONPATH=benchmarks python -m pytest -p record_outputs <same tests>
    python benchmarks/compare_outputs.py before.pkl after.pkl

Every call of ``sgf.pp.rank_encode``/``input_ids`` and ``sgf.tl.embed``/``perturb``/``perturbation_stats``/
``state_embeddings`` is recorded: its return value and what it wrote (obsm, varm, rank layers, obs, var, uns), as
arrays; run times and paths are left out. (The wrappers have no docstrings: the docstring convention test fails
under this plugin.)
"""

import os
import pickle

import numpy as np
import pandas as pd
import scipy.sparse as sp

RECORDS: dict = {}
CURRENT = {"test": None, "n": 0}
SKIPPED = ("elapsed", "seconds", "time", "path", "vocabulary_source")


def _as_array(values) -> np.ndarray:
    categorical = values.dtype.kind in "OU" or str(values.dtype) == "category"
    return np.asarray(values.astype(str) if categorical else values)


def _flatten(prefix: str, value, out: dict) -> None:
    if value is None:
        return
    if isinstance(value, pd.DataFrame):
        out[prefix + "/index"] = np.asarray(value.index.astype(str))
        for column in value.columns:
            out[f"{prefix}/{column}"] = _as_array(value[column])
    elif isinstance(value, pd.Series):
        out[prefix] = _as_array(value)
    elif hasattr(value, "items") and hasattr(value, "keys"):
        for key, item in list(value.items()):
            _flatten(f"{prefix}/{key}", item, out)
    elif sp.issparse(value):
        value = sp.csr_matrix(value)
        for part in ("data", "indices", "indptr"):
            out[f"{prefix}/{part}"] = getattr(value, part)
    elif isinstance(value, np.ndarray | list | tuple):
        try:
            out[prefix] = np.asarray(value)
        except ValueError:  # ragged
            out[prefix] = np.asarray(repr(value))
    elif isinstance(value, int | float | str | bool | np.generic) or hasattr(value, "__array__"):
        out[prefix] = np.asarray(value)


def _written(data, result) -> dict:
    out: dict = {}
    _flatten("return", result, out)
    if result is not None and hasattr(result, "obsm"):
        data = result
    adata = data.mod.get("rna", data) if hasattr(data, "mod") else data
    if hasattr(adata, "obsm"):
        for key in adata.obsm.keys():
            _flatten(f"obsm/{key}", adata.obsm[key], out)
        for key in adata.varm.keys():
            _flatten(f"varm/{key}", adata.varm[key], out)
        for key in adata.layers.keys():
            if "rank" in key:
                _flatten(f"layers/{key}", adata.layers[key], out)
        _flatten("obs", adata.obs, out)
        _flatten("var", adata.var, out)
        _flatten("uns", {k: v for k, v in adata.uns.items() if "geneformer" in k or "perturb" in k}, out)
    return {k: v for k, v in out.items() if not any(word in k for word in SKIPPED)}


def _wrap(module, name: str) -> None:
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        data = args[0] if args else kwargs.get("data", kwargs.get("adata"))
        RECORDS[f"{CURRENT['test']}#{CURRENT['n']}:{name}"] = _written(data, result)
        CURRENT["n"] += 1
        return result

    wrapper.__wrapped__ = original
    setattr(module, name, wrapper)


def pytest_configure(config) -> None:
    import scgeneformer as sgf

    for name in ("rank_encode", "input_ids"):
        _wrap(sgf.pp, name)
    for name in ("embed", "perturb", "perturbation_stats", "state_embeddings"):
        _wrap(sgf.tl, name)


def pytest_runtest_setup(item) -> None:
    CURRENT["test"] = item.nodeid.split("::", 1)[-1]
    CURRENT["n"] = 0


def pytest_unconfigure(config) -> None:
    with open(os.environ["SGF_RECORD_OUT"], "wb") as f:
        pickle.dump(RECORDS, f)
