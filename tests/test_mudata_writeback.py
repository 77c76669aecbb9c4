"""Issue 22 item 6: what a tool writes into a MuData's modality is visible at the MuData level, without update()."""

import warnings

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import fake_gene_id, labelled_classifier, make_counts, make_vocabulary, tiny_bert_config, tiny_model

import scgeneformer as sgf

QUIET = {"execution": {"accelerator": "cpu"}, "enable_progress_bar": False}


def two_modalities(rna: ad.AnnData, n_prot_cells: int | None = None) -> md.MuData:
    """``rna`` and a protein modality (of the first ``n_prot_cells`` cells), as mudata users build them."""
    n = rna.n_obs if n_prot_cells is None else n_prot_cells
    prot = ad.AnnData(np.ones((n, 3), dtype=np.float32), obs=pd.DataFrame(index=rna.obs_names[:n]))
    prot.var_names = ["CD3", "CD4", "CD8"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # mudata's own construction warns about its update()
        return md.MuData({"rna": rna, "prot": prot})


def future_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, FutureWarning)]


@pytest.fixture(scope="module")
def vocab():
    return make_vocabulary("V2")


@pytest.fixture(scope="module")
def classifier(vocab):
    """A (barely) fine-tuned cell classifier: annotate needs a classification head, not accuracy."""
    _, model = labelled_classifier(vocab)
    model.train_classifier(max_epochs=1, **QUIET)
    return model


def test_rank_encode_embed_and_annotate_are_visible_at_the_mudata_level(vocab, classifier, tmp_path):
    rna = make_counts(12, 120, seed=1)
    mdata = two_modalities(rna, n_prot_cells=9)  # three cells without proteins: missing values at MuData level
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        sgf.pp.rank_encode(mdata, vocabulary=vocab)
        sgf.tl.embed(mdata, tiny_model(vocab), gene_embeddings=True, execution={"accelerator": "cpu"})
        sgf.tl.annotate(mdata, classifier, execution={"accelerator": "cpu"})
    assert future_warnings(record) == []

    obs = mdata.obs
    np.testing.assert_array_equal(obs["rna:geneformer_n_tokens"], rna.obs["geneformer_n_tokens"])
    np.testing.assert_array_equal(obs["rna:geneformer_label"].astype(str), rna.obs["geneformer_label"].astype(str))
    assert obs["rna:geneformer_label"].dtype == "category"
    assert obs["rna:geneformer_label_probability"].dtype == np.float32  # dtypes are kept, not converted
    genes = mdata.var.loc[rna.var_names]
    np.testing.assert_array_equal(genes["rna:geneformer_token"], rna.var["geneformer_token"])
    np.testing.assert_array_equal(genes["rna:geneformer_genes_n_cells"], rna.var["geneformer_genes_n_cells"])
    assert mdata.var.loc[["CD3", "CD4", "CD8"], "rna:geneformer_token"].isna().all()
    # embeddings stay in the modality, where mudata keeps them (mdata["rna"].obsm; muon plots "rna:X_geneformer")
    assert "X_geneformer" in mdata["rna"].obsm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # mudata's writer and reader warn about their own update()
        mdata.write_h5mu(tmp_path / "results.h5mu")  # which re-reads every column: the same values as ours
        back = md.read_h5mu(tmp_path / "results.h5mu")
    pd.testing.assert_series_equal(back.obs["rna:geneformer_label"], obs["rna:geneformer_label"])
    np.testing.assert_allclose(back["rna"].obsm["X_geneformer"], rna.obsm["X_geneformer"])


def test_results_follow_the_mudata_order_of_cells(vocab, classifier):
    """The MuData's cells may come in another order than the modality's: values go to their own cell."""
    rna = make_counts(10, 120, seed=2)
    mdata = two_modalities(rna)
    rna_reordered = mdata["rna"][::-1].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mdata = md.MuData({"rna": rna_reordered, "prot": mdata["prot"]})
    sgf.pp.rank_encode(mdata, vocabulary=vocab)
    written = mdata["rna"].obs["geneformer_n_tokens"]
    np.testing.assert_array_equal(mdata.obs["rna:geneformer_n_tokens"], written.loc[mdata.obs_names])


def test_a_rerun_replaces_the_mudata_column_and_copy_leaves_the_original(vocab, classifier):
    rna = make_counts(8, 120, seed=3)
    mdata = two_modalities(rna)
    sgf.pp.rank_encode(mdata, vocabulary=vocab)
    out = sgf.tl.annotate(mdata, classifier, min_probability=1.0, copy=True, execution={"accelerator": "cpu"})
    assert "rna:geneformer_label" not in mdata.obs
    assert (out.obs["rna:geneformer_label"] == "unknown").all()
    sgf.tl.annotate(out, classifier, execution={"accelerator": "cpu"})
    assert "unknown" not in set(out.obs["rna:geneformer_label"])


def test_gene_tools_write_back_their_columns(vocab, tmp_path):
    table = pd.DataFrame(
        {
            "Gene stable ID": ["ENSMUSG01", "ENSMUSG02"],
            "Gene name": ["Cd14", "Cd8b1"],
            "Human gene stable ID": [fake_gene_id(1), fake_gene_id(2)],
            "Human homology type": ["ortholog_one2one", "ortholog_one2one"],
        }
    )
    rna = make_counts(6, 4)
    rna.var["symbol"] = ["Cd14", "Cd8b1", "Actb", "Gm1", "X1", "X2"][: rna.n_vars]
    mdata = two_modalities(rna)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        sgf.pp.map_orthologs(mdata, gene_id_key="symbol", table=table)
    assert future_warnings(record) == []
    assert mdata.var.loc[rna.var_names, "rna:human_ensembl_id"].tolist()[:2] == [fake_gene_id(1), fake_gene_id(2)]


@pytest.mark.slow
def test_classify_genes_writes_back(vocab):
    from test_gene_classifier import gene_data

    rna = gene_data(vocab, n_obs=20)
    sgf.GeneformerModel.setup_anndata(rna)
    torch.manual_seed(0)
    model = sgf.GeneformerModel(rna, bert_config=tiny_bert_config(vocab), vocabulary="V2")
    model.train_gene_classifier("kind", max_epochs=1, **QUIET)
    mdata = two_modalities(rna)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        sgf.tl.classify_genes(mdata, model, execution={"accelerator": "cpu"})
    assert future_warnings(record) == []
    for column in ("geneformer_gene_class", "geneformer_gene_class_high", "geneformer_gene_class_n_cells"):
        np.testing.assert_array_equal(
            mdata.var.loc[rna.var_names, f"rna:{column}"].astype(str), rna.var[column].astype(str)
        )


def test_a_model_set_up_on_a_mudata_says_to_pass_the_modality():
    import mudata as md
    from helpers import encoded_counts, make_vocabulary

    import scgeneformer as sgf

    mdata = md.MuData({"rna": encoded_counts(make_vocabulary("V1"), n_obs=6)})
    with pytest.raises(TypeError, match=r"mdata\['rna'\]"):
        sgf.GeneformerModel.setup_anndata(mdata)
