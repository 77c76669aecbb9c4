"""Issue 22 item 7: the documentation says what the code does (state_embeddings, model cards, messages, snippets)."""

import logging
import re
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from helpers import encoded_counts, make_vocabulary, tiny_model

import scgeneformer as sgf
from scgeneformer._utils._text import counted
from scgeneformer.model._card import CardFacts, front_matter

DOCS = Path(__file__).parents[1] / "docs"
ARCHITECTURE = {"layers": 2, "hidden_size": 32, "heads": 2, "input_size": 2048}


def test_state_embeddings_returns_what_the_docs_say():
    vocab = make_vocabulary("V1")
    adata = encoded_counts(vocab, n_obs=12)
    adata.obs["cell_type"] = np.array(["B", "NK", "T"])[np.arange(12) % 3]
    model = tiny_model(vocab)
    cpu = {"accelerator": "cpu"}
    assert sgf.tl.state_embeddings(adata, model, "cell_type", execution=cpu) is None
    stored = adata.uns["cell_type_geneformer_states"]
    assert stored["params"]["summary"] == "mean"
    table = sgf.tl.state_embeddings(adata, model, "cell_type", inplace=False, execution=cpu)
    assert list(table.index) == ["B", "NK", "T"] and table.shape[1] == model.module.config.hidden_size
    pd.testing.assert_frame_equal(stored["embeddings"], table)
    page = (DOCS / "embeddings.md").read_text()
    assert 'adata.uns["cell_type_geneformer_states"]["embeddings"]' in page and "inplace=False" in page


@pytest.mark.parametrize(
    ("checkpoint", "base", "history"),
    [
        ("Geneformer-V1-10M + classifier", "ctheodoris/Geneformer", "Geneformer-V1-10M + classifier"),
        ("Geneformer-V2-104M (8-bit)", "ctheodoris/Geneformer", "Geneformer-V2-104M (8-bit)"),
        ("lab/my-classifier + classifier", "lab/my-classifier", "lab/my-classifier + classifier"),
        ("/home/alice/models/my_bert + classifier", "my_bert", "my_bert + classifier"),
        ("/home/alice/models/my_bert/ (4-bit) + classifier", "my_bert", "my_bert (4-bit) + classifier"),
        (None, None, None),
    ],
)
def test_model_card_base_model_is_a_hub_id_or_a_folder_name(checkpoint, base, history):
    matter = front_matter(CardFacts(checkpoint=checkpoint, vocabulary="V1", architecture=ARCHITECTURE))
    assert (matter["base_model"], matter["history"]) == (base, history)


def test_a_saved_model_card_does_not_show_where_the_base_lay(tmp_path):
    vocab = make_vocabulary("V1")
    folder = (tmp_path / "private" / "my_bert").resolve()
    tiny_model(vocab).module.mlm.save_pretrained(folder)
    model = sgf.GeneformerModel.from_pretrained(folder, vocabulary="V1")
    model.save(tmp_path / "saved")
    card = sgf.model.read_model_card(tmp_path / "saved")
    assert card["base_model"] == "my_bert" and card["history"] == "my_bert"
    assert str(tmp_path) not in (tmp_path / "saved" / "README.md").read_text()


def test_counts_in_messages_agree_with_their_number(caplog):
    assert (counted(1, "cell"), counted(2, "cell"), counted(0, "gene")) == ("1 cell", "2 cells", "0 genes")
    assert counted(1, "class", "classes") == "1 class"
    empty = ad.AnnData(np.zeros((0, 1), dtype=np.float32))
    with pytest.raises(ValueError, match=r"The data have 0 cells and 1 gene: there is nothing to encode"):
        sgf.pp.rank_encode(empty, vocabulary=make_vocabulary("V1"))
    vocab = make_vocabulary("V1")
    adata = encoded_counts(vocab, n_obs=4)
    adata.obs["keep"] = [False, True, True, True]
    saved = sgf.settings.verbosity
    sgf.settings.verbosity = "info"
    try:
        with caplog.at_level(logging.INFO, logger="scgeneformer"), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            sgf.pp.rank_encode(adata, vocabulary=vocab, filter_key="keep")
    finally:
        sgf.settings.verbosity = saved
    assert "1 cell was excluded by filter_key." in caplog.text and "1 cells" not in caplog.text


def test_the_whole_analysis_clusters_with_what_the_doc_extra_installs():
    pytest.importorskip("igraph")
    import scanpy as sc

    page = (DOCS / "scanpy_users.md").read_text()
    leiden = re.search(r"^sc\.tl\.leiden\(.*$", page, re.MULTILINE).group()
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '"igraph"' in pyproject.split("optional-dependencies.doc")[1].split("]")[0]
    adata = ad.AnnData(np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32))
    adata.obsm["X_geneformer"] = adata.X
    sc.pp.neighbors(adata, use_rep="X_geneformer")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither leidenalg missing nor a deprecated default
        exec(leiden, {"sc": sc, "adata": adata})
    assert adata.obs["leiden"].nunique() > 1
