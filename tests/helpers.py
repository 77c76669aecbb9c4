"""Shared fixtures: a synthetic vocabulary (always available) and the real shared data (skipped when absent)."""

from __future__ import annotations

import http.server
import os
import threading
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from scgeneformer import Vocabulary

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SGF_SHARED_DIR", PROJECT_ROOT.parent / "shared"))
SHARED_REASON = f"needs the shared data folder {SHARED} (set SGF_SHARED_DIR to where it lives)"
N_FAKE_GENES = 4200


GOLDEN_INPUTS = {
    "A": ("data", "datasets", "pbmc3k_annotated.h5ad"),
    "B": ("data", "datasets", "celltypist_demo_559cells.h5ad"),
    "D": ("golden", "inputs", "D.h5ad"),
    "D2": ("golden", "inputs", "D2.h5ad"),
}
DICTIONARIES = {"V1": "V1_gc30M", "V2": "V2_gc104M"}


def shared_path(*parts: str) -> Path:
    """A path inside the shared data folder; skips the test when it is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(SHARED_REASON)
    return path


def fake_gene_id(i: int) -> str:
    return f"ENSG{i:011d}"


def make_vocabulary(version: str = "V2", seed: int = 0) -> Vocabulary:
    """A synthetic vocabulary of ``N_FAKE_GENES`` genes with random medians, shaped like the real ones."""
    rng = np.random.default_rng(seed)
    specials = ["<pad>", "<mask>", "<cls>", "<eos>"] if version == "V2" else ["<pad>", "<mask>"]
    genes = [fake_gene_id(i) for i in range(1, N_FAKE_GENES + 1)]
    tokens = {name: i for i, name in enumerate(specials + genes)}
    medians = dict(zip(genes, rng.uniform(0.1, 50, len(genes)).tolist(), strict=True))
    symbols = {f"GENE{i}": fake_gene_id(i) for i in range(1, N_FAKE_GENES + 1)}
    mapping = {g: g for g in genes}
    if version == "V2":
        mapping |= {s.upper(): g for s, g in symbols.items()}
    return Vocabulary(version, tokens, medians, symbols, mapping, source="synthetic")


@pytest.fixture(params=["V1", "V2"])
def vocab(request) -> Vocabulary:
    return make_vocabulary(request.param)


@pytest.fixture
def vocab_v2() -> Vocabulary:
    return make_vocabulary("V2")


def make_counts(n_obs: int = 30, n_vars: int = 300, *, seed: int = 0, density: float = 0.3) -> ad.AnnData:
    """Raw integer counts over the first ``n_vars`` fake genes, plus two genes outside the vocabulary."""
    rng = np.random.default_rng(seed)
    X = sp.random(n_obs, n_vars, density=density, format="csr", random_state=rng, dtype=np.float32)
    X.data = rng.integers(1, 200, X.nnz).astype(np.float32)
    extra = sp.csr_matrix(rng.integers(0, 5, (n_obs, 2)).astype(np.float32))
    X = sp.hstack([X, extra], format="csr")
    var_names = [fake_gene_id(i) for i in range(1, n_vars + 1)] + ["NOT_A_GENE", "ENSG99999999999"]
    return ad.AnnData(X, obs={"obs_names": [f"cell{i}" for i in range(n_obs)]}, var={"var_names": var_names})


@pytest.fixture
def adata() -> ad.AnnData:
    return make_counts()


def expected_tokens(adata: ad.AnnData, vocab: Vocabulary, *, n_counts=None) -> list[np.ndarray]:
    """Straightforward per-cell reference implementation used to check the vectorised one."""
    X = sp.csr_matrix(adata.X)
    tokens = vocab.map_gene_ids(adata.var_names)
    totals = np.asarray(X.sum(axis=1)).ravel() if n_counts is None else n_counts
    out = []
    for i in range(adata.n_obs):
        row = X[i].toarray().ravel().astype(np.float64)
        summed: dict[int, float] = {}
        for j in np.flatnonzero((row > 0) & (tokens >= 0)):
            summed[int(tokens[j])] = summed.get(int(tokens[j]), 0.0) + row[j]
        if not summed:
            out.append(np.array([], dtype=np.int32))
            continue
        items = sorted(summed.items(), key=lambda kv: (-(kv[1] / totals[i] * 1e4 / vocab.token_medians[kv[0]]), kv[0]))
        genes = [t for t, _ in items][: vocab.max_genes]
        if vocab.has_special_tokens:
            genes = [vocab.cls_id, *genes, vocab.eos_id]
        out.append(np.asarray(genes, dtype=np.int32))
    return out


def tiny_bert_config(vocab: Vocabulary, *, layers: int = 2, hidden: int = 32, seed: int = 0) -> dict:
    """A small random BERT configuration over a (synthetic) vocabulary."""
    return {
        "vocab_size": len(vocab),
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "intermediate_size": 2 * hidden,
        "max_position_embeddings": vocab.input_size,
        "hidden_act": "relu",
        "hidden_dropout_prob": 0.02,
        "attention_probs_dropout_prob": 0.02,
        "pad_token_id": 0,
    }


def tiny_model(vocab: Vocabulary, *, layers: int = 2, seed: int = 0):
    import torch

    from scgeneformer import GeneformerModel

    torch.manual_seed(seed)
    model = GeneformerModel(bert_config=tiny_bert_config(vocab, layers=layers), vocabulary=vocab.version)
    model.module.eval()  # no dropout in the plain-transformers comparisons
    return model


def encoded_counts(vocab: Vocabulary, n_obs: int = 24, n_vars: int = 300, seed: int = 0) -> ad.AnnData:
    import warnings

    import scgeneformer as sgf

    adata = make_counts(n_obs, n_vars, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sgf.pp.rank_encode(adata, vocabulary=vocab)
    return adata


class Mirror:
    """An HTTP server on 127.0.0.1 serving a folder laid out like the upstream repository."""

    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        mirror = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):
                mirror.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def isolated_settings(tmp_path):
    """Downloads go to a temporary cache; settings are restored afterwards."""
    import scgeneformer as sgf

    cache_before, url_before = sgf.settings._cache_dir, sgf.settings._hub_url
    sgf.settings.cache_dir = tmp_path / "cache"
    yield sgf.settings
    sgf.settings.cache_dir, sgf.settings.hub_url = cache_before, url_before


def encode_golden_input(name: str, version: str, **kwargs) -> ad.AnnData:
    """A golden input data set (A, B, D, D2) rank-encoded with the real dictionaries, as the reference ran on it."""
    import warnings

    import scgeneformer as sgf

    adata = ad.read_h5ad(shared_path(*GOLDEN_INPUTS[name]))
    options = {"filter_key": "filter_pass"} if "filter_pass" in adata.obs else {}
    options |= kwargs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sgf.pp.rank_encode(
            adata,
            vocabulary=shared_path("data", "dictionaries", DICTIONARIES[version]),
            gene_id_key="ensembl_id",
            n_counts_key="n_counts",
            allow_non_integer=True,
            **options,
        )
    return adata


def write_vocabulary_folder(folder: Path, vocab: Vocabulary) -> Path:
    """Write a vocabulary's four dictionaries as pickles under their upstream names (a dictionary folder)."""
    import pickle

    corpus = "gc104M" if vocab.version == "V2" else "gc30M"
    folder.mkdir(parents=True)
    names = {
        "token_dictionary": vocab.token_dictionary,
        "gene_median_dictionary": vocab.gene_medians,
        "gene_name_id_dict": vocab.gene_name_id,
        "ensembl_mapping_dict": vocab.ensembl_mapping,
    }
    for role, content in names.items():
        (folder / f"{role}_{corpus}.pkl").write_bytes(pickle.dumps(content))
    return folder


def cli_status(args: list[str]) -> int:
    """Run ``scgeneformer`` with ``args`` in this process; its exit status."""
    from scgeneformer.cli import main

    try:
        main(args)
    except SystemExit as e:
        return e.code or 0
    return 0


def labelled_classifier(vocab: Vocabulary, n_obs: int = 24, n_vars: int = 120):
    """Encoded counts with two cell types ("B", "T") set up for training, and a tiny untrained model on them."""
    import pandas as pd
    import torch

    import scgeneformer as sgf

    adata = encoded_counts(vocab, n_obs, n_vars)
    adata.obs["cell_type"] = pd.Categorical(np.array(["B", "T"])[np.arange(n_obs) % 2])
    sgf.GeneformerModel.setup_anndata(adata, labels_key="cell_type")
    torch.manual_seed(0)
    return adata, sgf.GeneformerModel(adata, bert_config=tiny_bert_config(vocab), vocabulary=vocab.version)
