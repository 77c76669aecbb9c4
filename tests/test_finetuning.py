"""Fine-tuning breadth (issue 12): published classifier folders, LoRA, quantization errors, multitask, CV, search."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from helpers import encoded_counts, make_vocabulary, tiny_bert_config

import scgeneformer as sgf

FAST = {"execution": {"accelerator": "cpu", "batch_size": 8}, "enable_progress_bar": False}


def labelled_data(vocab, n_obs=60, seed=0):
    """Three cell types with their own gene programs, two conditions, three donors."""
    adata = encoded_counts(vocab, n_obs=n_obs, n_vars=120, seed=seed)
    X = adata.X.toarray()
    kinds = np.arange(n_obs) % 3
    for kind in range(3):
        other = np.setdiff1d(np.arange(90), np.arange(kind * 30, kind * 30 + 30))
        X[np.ix_(kinds == kind, other)] = 0
    condition = (np.arange(n_obs) // 3) % 2
    X[condition == 1, 90:100] += 500  # the stimulated cells express ten genes highly
    adata.X = sp.csr_matrix(X)
    adata.obs["cell_type"] = pd.Categorical(np.array(["B", "NK", "T"])[kinds])
    adata.obs["condition"] = pd.Categorical(np.array(["ctrl", "stim"])[condition])
    adata.obs["donor"] = np.array(["d1", "d2", "d3"])[(np.arange(n_obs) // 6) % 3]
    sgf.pp.rank_encode(adata, vocabulary=vocab)
    return adata


def as_batch(adata, cells):
    ids, mask = sgf._compute._batching.pad_sequences(sgf.pp.input_ids(adata, cells))
    return ids, mask


# -- 1. classifier checkpoints load as classifiers ------------------------------------------------------------------
@pytest.mark.parametrize("version", ["V1", "V2"])
def test_sequence_classification_folders_load_with_their_head(tmp_path, version):
    from transformers import BertConfig, BertForSequenceClassification

    vocab = make_vocabulary(version)
    config = BertConfig(**tiny_bert_config(vocab), num_labels=3, id2label={0: "nf", 1: "hcm", 2: "dcm"})
    torch.manual_seed(0)
    reference = BertForSequenceClassification(config).eval()
    reference.save_pretrained(tmp_path / "classifier")
    model = sgf.GeneformerModel.from_pretrained(tmp_path / "classifier", vocabulary=version)
    assert model.classes == ["nf", "hcm", "dcm"] and model.module.classifier_pooling == "pooler"
    adata = encoded_counts(vocab, n_obs=10)
    sgf.tl.annotate(adata, model)
    ids, mask = as_batch(adata, np.arange(10))
    with torch.inference_mode():
        expected = torch.softmax(reference(input_ids=ids, attention_mask=mask).logits, -1).numpy()
    np.testing.assert_allclose(adata.obsm["geneformer_label_probabilities"].to_numpy(), expected, atol=1e-5)
    assert list(adata.obs["geneformer_label"]) == list(np.array(["nf", "hcm", "dcm"])[expected.argmax(1)])
    model.save(tmp_path / "saved")  # the head and pooler survive save and load
    again = sgf.GeneformerModel.load(tmp_path / "saved")
    np.testing.assert_allclose(again.predict(adata, soft=True).to_numpy(), expected, atol=1e-5)


def test_token_classification_folders_load_as_gene_classifiers(tmp_path):
    from transformers import BertConfig, BertForTokenClassification

    vocab = make_vocabulary("V1")
    config = BertConfig(**tiny_bert_config(vocab), num_labels=2, id2label={0: "insensitive", 1: "sensitive"})
    torch.manual_seed(0)
    reference = BertForTokenClassification(config).eval()
    reference.save_pretrained(tmp_path / "genes")
    model = sgf.GeneformerModel.from_pretrained(tmp_path / "genes", vocabulary="V1")
    assert model.gene_classes == ["insensitive", "sensitive"] and model.classes is None
    adata = encoded_counts(vocab, n_obs=1)
    ids, mask = as_batch(adata, [0])
    with torch.inference_mode():
        expected = torch.softmax(reference(input_ids=ids, attention_mask=mask).logits[0], -1).numpy()
    probabilities = model.predict_genes(adata, soft=True)
    token = adata.var["geneformer_token"].to_numpy()
    first = np.flatnonzero(token == ids[0, 0].item())[0]
    np.testing.assert_allclose(probabilities.iloc[first].to_numpy(), expected[0], atol=1e-5)


def test_the_published_cardiomyopathy_classifier_is_registered_with_its_classes():
    checkpoint = sgf.model.get_checkpoint("cardiomyopathy-classifier")
    assert checkpoint.classes == ("non-failing", "hypertrophic", "dilated")
    assert checkpoint.config["architectures"] == ["BertForSequenceClassification"]


# -- 2. LoRA and quantization -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_lora_train_save_load_annotate_merge(tmp_path):
    pytest.importorskip("peft")
    vocab = make_vocabulary("V1")
    adata = labelled_data(vocab)
    sgf.GeneformerModel.setup_anndata(adata, labels_key="cell_type")
    torch.manual_seed(0)
    model = sgf.GeneformerModel(adata, bert_config=tiny_bert_config(vocab), vocabulary="V1")
    encoder_before = {k: v.clone() for k, v in model.module.mlm.bert.state_dict().items()}
    model.add_lora(r=4, alpha=8)
    trainable, total = model.trainable_parameters()
    report = model.train_classifier(max_epochs=6, plan_kwargs={"lr": 5e-2}, **FAST)
    loss = model.history_["train_loss"].to_numpy().ravel().astype(float)
    assert loss[-1] < 0.7 * loss[0] and report["accuracy"] >= 0.5  # adapters on a random-weight model learn slowly
    state = model.module.mlm.bert.state_dict()
    for name, value in encoder_before.items():  # the base weights did not change, only the adapters
        key = (
            name
            if name in state
            else name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        )
        assert torch.equal(state[key], value), name
    assert model.trainable_parameters()[0] < 0.2 * total
    sgf.tl.annotate(adata, model, key_added="lora")
    model.save(tmp_path / "lora")
    loaded = sgf.GeneformerModel.load(tmp_path / "lora")
    assert loaded.lora_settings is not None
    sgf.tl.annotate(adata, loaded, key_added="loaded")
    np.testing.assert_array_equal(adata.obs["loaded"], adata.obs["lora"])
    np.testing.assert_allclose(adata.obsm["loaded_probabilities"], adata.obsm["lora_probabilities"], atol=1e-6)
    assert loaded.merge_lora() > 0 and loaded.lora_settings is None
    sgf.tl.annotate(adata, loaded, key_added="merged")
    np.testing.assert_allclose(adata.obsm["merged_probabilities"], adata.obsm["lora_probabilities"], atol=1e-5)
    sgf.tl.perturb(adata, model, "all", max_cells=1, vocabulary=vocab)  # the perturbation engine runs on adapters
    assert trainable > 0


@pytest.mark.slow
def test_lora_trains_masked_genes_and_gene_classifiers():
    pytest.importorskip("peft")
    vocab = make_vocabulary("V1")
    adata = labelled_data(vocab, n_obs=24)
    torch.manual_seed(0)
    model = sgf.GeneformerModel(adata, bert_config=tiny_bert_config(vocab), vocabulary="V1")
    model.add_lora(r=2, target_modules=("query", "value", "dense"))
    embeddings_before = model.module.mlm.bert.embeddings.word_embeddings.weight.detach().clone()
    adapter = next(p for n, p in model.module.named_parameters() if "lora_B" in n)
    assert not adapter.any()  # LoRA's B starts at zero: the adapter model equals the base model
    model.train(max_epochs=1, plan_kwargs={"lr": 1e-2, "warmup_steps": 0}, **FAST)
    assert adapter.any()  # masked-gene training moved the adapters ...
    assert torch.equal(model.module.mlm.bert.embeddings.word_embeddings.weight, embeddings_before)  # ... only
    genes = list(adata.var_names)
    model.train_gene_classifier({"a": genes[:30], "b": genes[30:60]}, max_epochs=1, validation_size=0.0, **FAST)
    trainable = {n for n, p in model.module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("gene_classifier") for n in trainable), trainable
    sgf.tl.classify_genes(adata, model)
    sgf.tl.embed(adata, model)
    assert np.isfinite(adata.obsm["X_geneformer"]).all()


def test_lora_and_quantization_errors_are_clear():
    vocab = make_vocabulary("V1")
    model = sgf.GeneformerModel(bert_config=tiny_bert_config(vocab), vocabulary="V1")
    with pytest.raises(ValueError, match="rank"):
        model.add_lora(r=0)
    with pytest.raises(ValueError, match="target_modules"):
        model.add_lora(target_modules=["pooler"])
    with pytest.raises(RuntimeError, match="CUDA GPUs only"):
        sgf.GeneformerModel.from_pretrained("Geneformer-V1-10M", quantization="8bit", vocabulary="V1")


# -- 3. multitask ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_multitask_classifier_round_trip(tmp_path):
    vocab = make_vocabulary("V1")
    adata = labelled_data(vocab, n_obs=90)
    torch.manual_seed(0)
    model = sgf.GeneformerModel(adata, bert_config=tiny_bert_config(vocab), vocabulary="V1")
    report = model.train_classifier(
        max_epochs=6, labels_key=["cell_type", "condition"], loss_weights=[1.0, 2.0], plan_kwargs={"lr": 3e-3}, **FAST
    )
    assert set(report["tasks"]) == {"cell_type", "condition"}
    assert report["tasks"]["cell_type"]["classes"] == ["B", "NK", "T"]
    assert report["tasks"]["condition"]["accuracy"] > 0.6 and report["tasks"]["cell_type"]["accuracy"] > 0.5
    assert model.classes == {"cell_type": ["B", "NK", "T"], "condition": ["ctrl", "stim"]}
    sgf.tl.annotate(adata, model)
    assert {"geneformer_label_cell_type", "geneformer_label_condition"} <= set(adata.obs)
    model.save(tmp_path / "multitask")
    loaded = sgf.GeneformerModel.load(tmp_path / "multitask")
    sgf.tl.annotate(adata, loaded, key_added="again")
    for task in ("cell_type", "condition"):
        np.testing.assert_array_equal(adata.obs[f"again_{task}"], adata.obs[f"geneformer_label_{task}"])
    adata.write_h5ad(tmp_path / "annotated.h5ad")


# -- 4. cross-validation and search -----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("group_key", [None, "donor"])
def test_cell_classification_cv_uses_every_cell_once(group_key):
    vocab = make_vocabulary("V1")
    adata = labelled_data(vocab)
    torch.manual_seed(0)
    model = sgf.GeneformerModel(bert_config=tiny_bert_config(vocab), vocabulary="V1")
    table = sgf.tl.cell_classification_cv(
        adata, model, "cell_type", n_folds=3, group_key=group_key, max_epochs=1, inplace=False, **FAST
    )
    assert list(table["fold"]) == [0, 1, 2] and table["n_test"].sum() == adata.n_obs
    test_cells = [set(cells) for cells in table["test_cells"]]
    assert set.union(*test_cells) == set(adata.obs_names)
    assert all(not (a & b) for i, a in enumerate(test_cells) for b in test_cells[i + 1 :])
    if group_key:
        donors = [set(adata.obs.loc[list(cells), "donor"]) for cells in test_cells]
        assert all(not (a & b) for i, a in enumerate(donors) for b in donors[i + 1 :])  # no donor in two test folds
    assert table["accuracy"].between(0, 1).all()
    assert model.module.classifier is None  # the given model is left as it was


@pytest.mark.slow
def test_hyperparameter_search_runs_a_small_study():
    pytest.importorskip("optuna")
    vocab = make_vocabulary("V1")
    adata = labelled_data(vocab)
    torch.manual_seed(0)
    model = sgf.GeneformerModel(bert_config=tiny_bert_config(vocab), vocabulary="V1")
    sgf.tl.hyperparameter_search(adata, model, "cell_type", n_trials=2, max_epochs=2, **FAST)
    result = adata.uns["geneformer_search"]
    assert len(result["trials"]) == 2 and {"lr", "warmup_steps", "freeze_layers", "value"} <= set(result["trials"])
    assert result["best"]["value"] == result["trials"]["value"].max()


# -- 5. training speed: attention dropout, progress bars --------------------------------------------------------
class _AttentionDropoutProbe:
    """Records the attention-probability dropout of every layer at each training step."""

    def __init__(self):
        import lightning.pytorch as pl

        probe = self

        class Probe(pl.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                layers = pl_module.module.mlm.bert.encoder.layer
                probe.seen.append({layer.attention.self.dropout.p for layer in layers})

        self.seen: list[set[float]] = []
        self.callback = Probe()


@pytest.mark.parametrize("attention_dropout", [None, True])
def test_attention_dropout_is_off_on_cpu_by_default_and_restored(attention_dropout, capfd):
    vocab = make_vocabulary("V1")
    adata = labelled_data(vocab, n_obs=12)
    torch.manual_seed(0)
    config = dict(tiny_bert_config(vocab), attention_probs_dropout_prob=0.05)
    model = sgf.GeneformerModel(adata, bert_config=config, vocabulary="V1")
    probe = _AttentionDropoutProbe()
    model.train(
        max_epochs=1,
        plan_kwargs={"attention_dropout": attention_dropout},
        callbacks=[probe.callback],
        execution={"accelerator": "cpu", "batch_size": 8, "progress_bar": False},
    )
    expected = {0.05} if attention_dropout else {0.0}
    assert probe.seen and all(seen == expected for seen in probe.seen)
    layers = model.module.mlm.bert.encoder.layer
    assert {layer.attention.self.dropout.p for layer in layers} == {0.05}  # the model keeps its configuration
    printed = capfd.readouterr()
    assert "Epoch" not in printed.out + printed.err  # execution's progress_bar=False reaches Lightning
