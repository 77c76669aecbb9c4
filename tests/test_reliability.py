"""Nothing lost, nothing executed, nothing silently wrong: interrupted writes, crafted files, bad selections,
unwritable results, backed files, weak errors, exact resume, cache races and training mode (issue 10)."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from helpers import encoded_counts, make_counts, make_vocabulary, tiny_bert_config, tiny_model, write_vocabulary_folder

import scgeneformer as sgf
from scgeneformer._utils._files import UnsafeContentError


def weights_of(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.module.state_dict().values()])


# -- 1. atomic save ----------------------------------------------------------------------------------------------
def test_an_interrupted_save_keeps_the_previous_model(tmp_path, monkeypatch):
    vocab = make_vocabulary("V1")
    first, second = tiny_model(vocab, seed=0), tiny_model(vocab, seed=1)
    folder = tmp_path / "model"
    first.save(folder)
    import safetensors.torch

    real_save_file = safetensors.torch.save_file

    def killed_while_writing_weights(state, path, metadata=None):
        real_save_file(state, path, metadata=metadata)
        Path(path).write_bytes(Path(path).read_bytes()[:1000])  # a truncated file, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", killed_while_writing_weights)
    with pytest.raises(KeyboardInterrupt):
        second.save(folder, overwrite=True)
    monkeypatch.undo()
    assert torch.equal(weights_of(sgf.GeneformerModel.load(folder)), weights_of(first))

    import scgeneformer.model._model_folder as saving

    def killed_before_the_description(path, text):
        raise KeyboardInterrupt

    monkeypatch.setattr(saving, "write_text_atomic", killed_before_the_description)
    with pytest.raises(KeyboardInterrupt):
        second.save(folder, overwrite=True)  # the new weights are complete, model.json still names the old ones
    monkeypatch.undo()
    assert torch.equal(weights_of(sgf.GeneformerModel.load(folder)), weights_of(first))

    second.save(folder, overwrite=True)
    assert torch.equal(weights_of(sgf.GeneformerModel.load(folder)), weights_of(second))
    assert len(list(folder.glob("model-*.safetensors"))) == 1  # the previous weights are removed afterwards
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary files left


SAVE_LOOP = """
import sys, itertools
sys.path.insert(0, {tests!r})
from pathlib import Path
from helpers import make_vocabulary, tiny_model
vocab = make_vocabulary("V1")
models = [tiny_model(vocab, seed=0), tiny_model(vocab, seed=1)]
for i in itertools.count():
    models[i % 2].save({folder!r}, overwrite=True)
    if i == 0:
        Path({folder!r}, "ready").touch()
"""


@pytest.mark.slow
def test_a_model_saved_over_and_over_survives_kill_9(tmp_path):
    vocab = make_vocabulary("V1")
    expected = [weights_of(tiny_model(vocab, seed=0)), weights_of(tiny_model(vocab, seed=1))]
    folder = tmp_path / "model"
    script = SAVE_LOOP.format(tests=str(Path(__file__).parent), folder=str(folder))
    rng = np.random.default_rng(0)
    for _ in range(2):
        child = subprocess.Popen([sys.executable, "-c", script])
        deadline = time.time() + 120
        while not (folder / "ready").exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.05, 0.4))
        child.kill()  # SIGKILL, mid-save most of the time
        child.wait()
        loaded = weights_of(sgf.GeneformerModel.load(folder))
        assert any(torch.equal(loaded, w) for w in expected)
        (folder / "ready").unlink()


# -- 2. loading never executes code ---------------------------------------------------------------------------------
class Payload:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_crafted_files_are_refused_without_running_code(tmp_path):
    marker = tmp_path / "code_ran"
    vocab = make_vocabulary("V2")
    # a vocabulary folder of plain pickles loads; one holding an object is refused
    write_vocabulary_folder(tmp_path / "vocab", vocab)
    assert len(sgf.Vocabulary.from_folder(tmp_path / "vocab")) == len(vocab)
    (tmp_path / "vocab" / "gene_name_id_dict_gc104M.pkl").write_bytes(pickle.dumps({"A": Payload(marker)}))
    with pytest.raises(UnsafeContentError, match="refused: unsafe content"):
        sgf.pp.rank_encode(make_counts(), vocabulary=tmp_path / "vocab")
    # a scvi-tools style model.pt (a pickle) is refused, not unpickled
    (tmp_path / "model").mkdir()
    torch.save({"attr_dict": Payload(marker)}, tmp_path / "model" / "model.pt")
    with pytest.raises(UnsafeContentError, match="refused: unsafe content"):
        sgf.GeneformerModel.load(tmp_path / "model")
    # a Hugging Face folder whose pytorch_model.bin carries code
    hf = tmp_path / "hf"
    tiny_model(vocab).module.mlm.save_pretrained(hf)
    (hf / "model.safetensors").unlink()
    torch.save({"bert.embeddings.word_embeddings.weight": Payload(marker)}, hf / "pytorch_model.bin")
    with pytest.raises(UnsafeContentError, match="refused: unsafe content"):
        sgf.GeneformerModel.from_pretrained(hf, vocabulary="V2")
    assert not marker.exists()


# -- 3. missing or mismatched weights ------------------------------------------------------------------------------
def hf_folder(tmp_path: Path, vocab, name="hf", **config_changes) -> Path:
    folder = tmp_path / name
    model = tiny_model(vocab)
    model.module.mlm.save_pretrained(folder)
    if config_changes:
        config = json.loads((folder / "config.json").read_text()) | config_changes
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_incomplete_or_mismatched_weights_are_errors(tmp_path):
    from safetensors.torch import load_file, save_file

    vocab = make_vocabulary("V2")
    folder = hf_folder(tmp_path, vocab)
    state = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in state.items() if "layer.1." not in k}, folder / "model.safetensors")
    with pytest.raises(ValueError, match="num_hidden_layers is 2 but the weights hold 1 layers"):
        sgf.GeneformerModel.from_pretrained(folder, vocabulary="V2")
    partial = hf_folder(tmp_path, vocab, "partial")
    state = load_file(partial / "model.safetensors")
    without_query = {k: v for k, v in state.items() if "layer.1.attention.self.query" not in k}
    save_file(without_query, partial / "model.safetensors")
    with pytest.raises(ValueError, match=r"incomplete: missing bert\.encoder\.layer\.1\.attention\.self\.query"):
        sgf.GeneformerModel.from_pretrained(partial, vocabulary="V2")
    with pytest.raises(ValueError, match="num_hidden_layers is 6 but the weights hold 2"):
        sgf.GeneformerModel.from_pretrained(hf_folder(tmp_path, vocab, "six", num_hidden_layers=6), vocabulary="V2")
    with pytest.raises(ValueError, match="vocab_size is 20275 but the word embeddings have 4204 rows"):
        sgf.GeneformerModel.from_pretrained(hf_folder(tmp_path, vocab, "vocab", vocab_size=20275))
    with pytest.raises(ValueError, match="hidden_size is 64 but the embeddings have 32 columns"):
        sgf.GeneformerModel.from_pretrained(hf_folder(tmp_path, vocab, "hidden", hidden_size=64), vocabulary="V2")
    extra = hf_folder(tmp_path, vocab, "extra")
    state = load_file(extra / "model.safetensors") | {"classifier.weight": torch.zeros(3, 32)}
    save_file(state, extra / "model.safetensors")
    with pytest.warns(UserWarning, match="does not use.*classifier.weight"):
        sgf.GeneformerModel.from_pretrained(extra, vocabulary="V2")


def test_the_vocabulary_must_agree_with_the_embedding_matrix(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(**tiny_bert_config(make_vocabulary("V1"), hidden=8, layers=1) | {"vocab_size": 25_426})
    BertForMaskedLM(config).save_pretrained(tmp_path / "v1_sized")
    assert sgf.GeneformerModel.from_pretrained(tmp_path / "v1_sized").vocabulary_version == "V1"
    with pytest.raises(ValueError, match="size of the V1 vocabulary"):
        sgf.GeneformerModel.from_pretrained(tmp_path / "v1_sized", vocabulary="V2")


# -- 4. selections mean what they say -------------------------------------------------------------------------------
@pytest.fixture
def perturb_setup():
    vocab = make_vocabulary("V1")
    adata = encoded_counts(vocab, n_obs=12, n_vars=40, seed=3)
    return adata, tiny_model(vocab), vocab


def test_cell_selections_accept_only_booleans(perturb_setup):
    adata, model, vocab = perturb_setup
    adata.obs["keep"] = pd.Categorical(np.where(np.arange(adata.n_obs) < 3, "yes", "no"))
    adata.obs["flag"] = pd.Categorical(np.where(np.arange(adata.n_obs) < 3, "True", "False"))
    for column in ("keep", "flag"):
        with pytest.raises(TypeError, match="not a boolean one"):
            sgf.tl.perturb(adata, model, "all", cells=column, vocabulary=vocab)
        with pytest.raises(TypeError, match="not a boolean one"):
            sgf.tl.embed(adata, model, gene_embeddings=True, gene_embedding_cells=column)
    adata.obs["nullable"] = pd.array([True, None, False] + [False] * (adata.n_obs - 3), dtype="boolean")
    results = sgf.tl.perturb(adata, model, "all", cells="nullable", vocabulary=vocab, inplace=False)
    assert set(results["cells"]["cell"].astype(str)) == {adata.obs_names[0]}  # missing values are not selected
    for bad in (-1, 0, 1.5, True):
        with pytest.raises(ValueError, match="max_cells"):
            sgf.tl.perturb(adata, model, "all", max_cells=bad, vocabulary=vocab)
    assert "geneformer_perturb" not in adata.uns
    duplicated = adata.copy()
    duplicated.obs_names = ["same"] * 2 + list(adata.obs_names[2:])
    with pytest.raises(ValueError, match="obs names repeat"):
        sgf.tl.perturb(duplicated, model, "all", vocabulary=vocab)


# -- 5 and 11. results are always writable, and analysable after reading back ---------------------------------------
def all_results(vocab) -> tuple[ad.AnnData, sgf.GeneformerModel]:
    adata = encoded_counts(vocab, n_obs=20, n_vars=40, seed=5)
    adata.obs["state"] = pd.Categorical(np.array(["T/NK ctrl", "B", "mono/x", "DC"])[np.arange(adata.n_obs) % 4])
    torch.manual_seed(0)
    model = sgf.GeneformerModel(
        bert_config=tiny_bert_config(vocab), vocabulary="V1", classes=["a/b", "c"], gene_classes=["x/y", "z"]
    )
    sgf.tl.embed(adata, model, gene_embeddings=True)
    sgf.tl.annotate(adata, model)
    sgf.tl.classify_genes(adata, model)
    sgf.tl.state_embeddings(adata, model, "state")
    no_alt = {"state_key": "state", "start_state": "T/NK ctrl", "goal_state": "B"}
    sgf.tl.perturb(adata, model, "all", states=no_alt, gene_shifts=True, max_cells=3, vocabulary=vocab)
    two_alts = {"state_key": "state", "start_state": "B", "goal_state": "mono/x", "alt_states": ["DC", "T/NK ctrl"]}
    sgf.tl.perturb(adata, model, "all", states=two_alts, max_cells=3, vocabulary=vocab, key_added="two_alts")
    for mode in ("goal_state_shift", "mixture_model", "aggregate_data", "aggregate_gene_shifts"):
        sgf.tl.perturbation_stats(adata, mode)
        sgf.tl.perturbation_stats(adata, mode, key="two_alts")
    sgf.tl.perturbation_stats(adata, "vs_null", null=adata)
    return adata, model


def test_every_result_survives_h5ad_and_zarr_and_stays_analysable(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vocab = make_vocabulary("V1")
    adata, _ = all_results(vocab)
    cells = adata.uns["geneformer_perturb"]["cells"]
    assert "shift_T_NK ctrl" in cells and "shift_B" in cells  # "/" is not allowed in keys of h5ad/zarr files
    assert adata.uns["geneformer_perturb"]["params"]["states"]["start_state"] == "T/NK ctrl"  # original label kept
    assert list(adata.obsm["geneformer_label_probabilities"].columns) == ["a_b", "c"]
    assert adata.uns["geneformer_label"]["classes"] == ["a/b", "c"]
    assert "geneformer_gene_class_x_y" in adata.var
    adata.write_h5ad(tmp_path / "results.h5ad")
    adata.write_zarr(tmp_path / "results.zarr")
    for back in (ad.read_h5ad(tmp_path / "results.h5ad"), ad.read_zarr(tmp_path / "results.zarr")):
        np.testing.assert_array_equal(back.obsm["X_geneformer"], adata.obsm["X_geneformer"])
        pd.testing.assert_frame_equal(
            back.uns["geneformer_perturb"]["cells"].astype(str), cells.astype(str), check_dtype=False
        )
        for key in ("geneformer_perturb", "two_alts"):
            for mode in ("goal_state_shift", "mixture_model", "aggregate_data", "aggregate_gene_shifts"):
                again = sgf.tl.perturbation_stats(back, mode, key=key, inplace=False)
                stored = adata.uns[key][f"stats_{mode}"]
                pd.testing.assert_frame_equal(again.astype(str), stored.astype(str), check_dtype=False)
        sgf.tl.perturbation_stats(back, "vs_null", null=back, inplace=False)
        assert len(sgf.pl.perturbation_shifts(back, n_genes=3, show=False).get_yticklabels()) == 3
        sgf.pl.perturbation_distribution(back, n_genes=2, show=False)
        sgf.pl.perturbation_shifts(back, key="two_alts", show=False)
        sgf.pl.perturbation_heatmap(back, n_perturbed=2, n_affected=3, show=False)
        sgf.pl.confusion_matrix(back, "state", show=False)
        plt.close("all")


# -- 6. backed "r+" encoding is kept --------------------------------------------------------------------------------
def test_encoding_a_backed_file_in_place_persists(tmp_path):
    vocab = make_vocabulary("V2")
    path = tmp_path / "data.h5ad"
    make_counts(30, 300).write_h5ad(path)
    in_memory = ad.read_h5ad(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sgf.pp.rank_encode(in_memory, vocabulary=vocab)
        backed = ad.read_h5ad(path, backed="r+")
        sgf.pp.rank_encode(backed, vocabulary=vocab)
    model = tiny_model(vocab)
    sgf.tl.embed(in_memory, model)
    with contextlib.suppress(Exception):
        backed.write()  # not needed; anndata cannot rewrite a layer read from the same file, the file stays encoded
    backed.file.close()
    for reopened in (ad.read_h5ad(path), ad.read_h5ad(path, backed="r")):
        assert reopened.uns["geneformer"]["params"]["vocabulary"] == "V2"
        sgf.tl.embed(reopened, model)
        np.testing.assert_allclose(reopened.obsm["X_geneformer"], in_memory.obsm["X_geneformer"], atol=1e-6)
    read_only = tmp_path / "read_only.h5ad"
    make_counts(30, 300).write_h5ad(read_only)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sgf.pp.rank_encode(ad.read_h5ad(read_only, backed="r"), vocabulary=vocab)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("read_only", ".read_only"))) == [
        "read_only.geneformer_ranks.h5",
        "read_only.h5ad",
    ]


# -- 7. weak errors made clear -----------------------------------------------------------------------------------------
def test_clear_errors_for_bad_input(tmp_path, perturb_setup):
    vocab = make_vocabulary("V1")
    for bad in (0, -5):
        with pytest.raises(ValueError, match="chunk_size must be a positive"):
            sgf.pp.rank_encode(make_counts(), vocabulary=vocab, chunk_size=bad)
    with pytest.raises(ValueError, match="0 cells"):
        sgf.pp.rank_encode(make_counts()[:0].copy(), vocabulary=vocab)
    with pytest.raises(ValueError, match="0 genes"):
        sgf.pp.rank_encode(make_counts()[:, :0].copy(), vocabulary=vocab)
    dense16 = make_counts()
    dense16.X = dense16.X.toarray().astype(np.float16)
    with pytest.raises(TypeError, match="float16"):
        sgf.pp.rank_encode(dense16, vocabulary=vocab)
    flagged = make_counts()
    flagged.obs["pass"] = pd.array([True, None] + [False] * (flagged.n_obs - 2), dtype="boolean")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sgf.pp.rank_encode(flagged, vocabulary=vocab, filter_key="pass")
    assert (flagged.obs["geneformer_n_tokens"] > 0).tolist() == [True] + [False] * (flagged.n_obs - 1)
    flagged.obs["text"] = pd.Categorical(["True", "False"] * (flagged.n_obs // 2))
    with pytest.raises(TypeError, match="'True'/'False' are not converted"):
        sgf.pp.rank_encode(flagged, vocabulary=vocab, filter_key="text")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sgf.GeneformerModel.load(tmp_path / "nowhere")
    hf = hf_folder(tmp_path, vocab)
    with pytest.raises(ValueError, match="Hugging Face model folder.*from_pretrained"):
        sgf.GeneformerModel.load(hf)
    adata, model, vocab = perturb_setup
    with pytest.raises(TypeError, match="genes must be"):
        sgf.tl.perturb(adata, model, None, vocabulary=vocab)
    with pytest.raises(ValueError, match="selects no cells"):
        sgf.tl.perturb(adata, model, "all", cells=[], vocabulary=vocab)
    adata.obs["group"] = np.arange(adata.n_obs) % 2
    with pytest.raises(ValueError, match="holds int values, not strings.*'1' → 1"):
        states = {"state_key": "group", "start_state": "1", "goal_state": "0"}
        sgf.tl.perturb(adata, model, states=states, vocabulary=vocab)


# -- 8. resume is exact ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_killed_and_resumed_training_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    from lightning.pytorch.callbacks import Callback

    workdir = tmp_path / "workdir"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    checkpoints = tmp_path / "checkpoints"

    vocab = make_vocabulary("V2")

    def fresh():
        adata = encoded_counts(vocab, n_obs=40, n_vars=60)
        torch.manual_seed(0)
        return sgf.GeneformerModel(adata, bert_config=tiny_bert_config(vocab), vocabulary="V2")

    class Killed(Exception):
        pass

    class KilledAtEpoch2(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 2:
                raise Killed  # as if the process were killed before its third epoch

    options = {
        "plan_kwargs": {"lr": 1e-3, "warmup_steps": 0},
        "execution": {"accelerator": "cpu", "token_budget": 1024},
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "logger": False,
    }
    uninterrupted = fresh()
    uninterrupted.train(max_epochs=3, **options)
    killed = fresh()
    with pytest.raises(Killed):
        killed.train(max_epochs=3, checkpoint_dir=checkpoints, callbacks=[KilledAtEpoch2()], **options)
    (checkpoint,) = checkpoints.glob("epoch=1-*.ckpt")
    assert list(workdir.iterdir()) == []  # only the checkpoints asked for: nothing (scvi_log/) in the working directory
    resumed = fresh()
    resumed.train(max_epochs=3, ckpt_path=str(checkpoint), **options)
    assert torch.equal(weights_of(resumed), weights_of(uninterrupted))


# -- 9. the shared cache is race-free ---------------------------------------------------------------------------
def test_seeding_the_cache_never_shows_a_partial_file(tmp_path, isolated_settings, monkeypatch):
    import hashlib

    from scgeneformer._hub import _download, _registry

    content = os.urandom(200_000)
    remote = _registry.RemoteFile("sub/token_dictionary_gc30M.pkl", len(content), hashlib.sha256(content).hexdigest())
    monkeypatch.setitem(_registry.DICTIONARY_FILES["V1"], "token_dictionary", remote)
    source = tmp_path / "copies"
    source.mkdir()
    (source / "token_dictionary_gc30M.pkl").write_bytes(content)
    target = Path(isolated_settings.cache_dir) / remote.path
    halfway, resume = threading.Event(), threading.Event()
    real_copyfile = shutil.copyfile

    def slow_copy(src, dst, **kwargs):
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            fout.write(fin.read(len(content) // 2))
            fout.flush()
            halfway.set()
            resume.wait(10)
            fout.write(fin.read())
        return dst

    monkeypatch.setattr(shutil, "copyfile", slow_copy)
    seeding = threading.Thread(target=_download.seed_cache, args=(source,))
    seeding.start()
    assert halfway.wait(10)
    assert not target.exists()  # a reader sees no file rather than half of one
    resume.set()
    seeding.join()
    monkeypatch.setattr(shutil, "copyfile", real_copyfile)
    assert target.read_bytes() == content
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]


# -- 10. training trains ---------------------------------------------------------------------------------------------
def test_dropout_is_on_while_training_and_off_for_inference():
    from lightning.pytorch.callbacks import Callback

    vocab = make_vocabulary("V1")
    adata = encoded_counts(vocab, n_obs=30, n_vars=60)
    torch.manual_seed(0)
    model = sgf.GeneformerModel(adata, bert_config=tiny_bert_config(vocab), vocabulary="V1")
    assert not model.module.training  # a new model is ready for inference

    class Check(Callback):
        modes: list = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            dropouts = [m for m in pl_module.module.modules() if isinstance(m, torch.nn.Dropout)]
            self.modes.append(pl_module.module.training and all(m.training for m in dropouts))

    check = Check()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.train(max_epochs=1, execution={"accelerator": "cpu"}, callbacks=[check], enable_progress_bar=False)
    assert check.modes and all(check.modes)
    assert not any("eval mode" in str(w.message) for w in caught)  # Lightning's "modules in eval mode" warning
    assert not model.module.training
    sgf.tl.embed(adata, model, key_added="first")
    sgf.tl.embed(adata, model, key_added="second")
    np.testing.assert_array_equal(adata.obsm["X_first"], adata.obsm["X_second"])


def test_mudata_results_are_written_to_the_modality(perturb_setup, tmp_path):
    adata, model, vocab = perturb_setup
    mdata = md.MuData({"rna": adata})
    sgf.tl.perturb(mdata, model, "all", max_cells=1, vocabulary=vocab)
    assert "geneformer_perturb" in mdata.mod["rna"].uns
    mdata.write(tmp_path / "data.h5mu")
    back = md.read_h5mu(tmp_path / "data.h5mu")
    assert len(sgf.tl.perturbation_stats(back, "aggregate_data", inplace=False)) > 0
    assert sp.issparse(back.mod["rna"].layers["geneformer_ranks"])
