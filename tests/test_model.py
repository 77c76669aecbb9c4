import shutil

import numpy as np
import pytest
import torch
from helpers import Mirror, encoded_counts, make_vocabulary, shared_path, tiny_bert_config, tiny_model

import scgeneformer as sgf
from scgeneformer._hub import _checkpoints
from scgeneformer._hub._registry import RemoteFile


def test_registry_lists_every_published_checkpoint():
    table = sgf.list_models()
    assert len(table) == 9
    assert table.loc["Geneformer-V1-10M", "parameters"] == 10_288_722  # as computed for the golden checkpoints
    assert table.loc["Geneformer-V2-316M", "vocabulary"] == "V2"
    for checkpoint in _checkpoints.CHECKPOINTS.values():
        if checkpoint.config["architectures"] == ["BertForMaskedLM"]:
            # fp32 masked-LM weights: 4 bytes per parameter plus a small header.
            assert 0 <= checkpoint.weights.size - 4 * checkpoint.n_parameters < 200_000, checkpoint.name
    assert _checkpoints.get_checkpoint("v2-104m").name == "Geneformer-V2-104M"


def test_param_counts_of_golden_checkpoints():
    import json

    counts = json.loads(shared_path("golden", "checkpoints", "param_counts.json").read_text())
    for name in ("tiny_v1", "tiny_v2"):
        model = sgf.GeneformerModel.from_pretrained(shared_path("golden", "checkpoints", name))
        assert sum(p.numel() for p in model.module.parameters()) == counts[name]
        assert model.vocabulary_version == ("V1" if name.endswith("1") else "V2")
        assert model.is_trained_


@pytest.fixture
def hf_folder(tmp_path):
    vocab = make_vocabulary("V2")
    model = tiny_model(vocab)
    folder = tmp_path / "hf"
    model.module.mlm.save_pretrained(folder)
    return folder, model


def test_local_folder_and_vocabulary_check(hf_folder):
    folder, original = hf_folder
    loaded = sgf.GeneformerModel.from_pretrained(folder, vocabulary="V2")
    for (name, a), b in zip(original.module.state_dict().items(), loaded.module.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="vocabulary"):
        sgf.GeneformerModel.from_pretrained(folder)  # a vocab_size that is neither V1 nor V2
    with pytest.raises(FileNotFoundError, match="list_models"):
        sgf.GeneformerModel.from_pretrained(folder.parent / "missing")


def test_truncated_weights_give_a_clear_error(hf_folder):
    folder, _ = hf_folder
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match="corrupted or truncated"):
        sgf.GeneformerModel.from_pretrained(folder, vocabulary="V2")


def test_save_load_roundtrip_and_corruption(tmp_path):
    vocab = make_vocabulary("V1")
    adata = encoded_counts(vocab)
    model = tiny_model(vocab)
    sgf.tl.embed(adata, model)
    model.save(tmp_path / "saved")
    loaded = sgf.GeneformerModel.load(tmp_path / "saved")
    assert loaded.vocabulary_version == "V1" and loaded.module.n_layers == 2
    sgf.tl.embed(adata, loaded, key_added="again")
    np.testing.assert_array_equal(adata.obsm["X_geneformer"], adata.obsm["X_again"])
    with pytest.raises(ValueError, match="exists"):
        model.save(tmp_path / "saved")
    (saved,) = (tmp_path / "saved").glob("model-*.safetensors")
    saved.write_bytes(saved.read_bytes()[:1000])
    with pytest.raises(ValueError, match="corrupted or truncated"):
        sgf.GeneformerModel.load(tmp_path / "saved")
    description = tmp_path / "saved" / "model.json"
    description.write_text(description.read_text()[:50])
    with pytest.raises(ValueError, match="corrupted or truncated"):
        sgf.GeneformerModel.load(tmp_path / "saved")


def test_model_saved_with_data_loads_with_data(tmp_path):
    vocab = make_vocabulary("V1")
    adata = encoded_counts(vocab)
    sgf.GeneformerModel.setup_anndata(adata)
    torch.manual_seed(0)
    model = sgf.GeneformerModel(adata, bert_config=tiny_bert_config(vocab), vocabulary="V1")
    model.save(tmp_path / "saved", save_anndata=True)
    loaded = sgf.GeneformerModel.load(tmp_path / "saved", adata)
    sgf.tl.embed(adata, model)
    sgf.tl.embed(adata, loaded, key_added="again")
    np.testing.assert_array_equal(adata.obsm["X_geneformer"], adata.obsm["X_again"])


def test_published_checkpoint_download_through_pooch(tmp_path, isolated_settings, monkeypatch):
    """A registered checkpoint is fetched from a hub (here 127.0.0.1), verified, cached and loaded."""
    source = shared_path("golden", "checkpoints", "tiny_v1", "model.safetensors")
    import hashlib

    remote = RemoteFile(
        "tiny-test/model.safetensors", source.stat().st_size, hashlib.sha256(source.read_bytes()).hexdigest()
    )
    config = _checkpoints._config(3, 64, 4, 128, 0.02, _checkpoints._V1)
    checkpoint = _checkpoints.Checkpoint("tiny-test", "V1", remote, config)
    monkeypatch.setitem(_checkpoints._BY_ALIAS, "tiny-test", checkpoint)
    mirror_root = tmp_path / "mirror"
    (mirror_root / "tiny-test").mkdir(parents=True)
    shutil.copyfile(source, mirror_root / remote.path)
    with Mirror(mirror_root) as mirror:
        isolated_settings.hub_url = mirror.url
        model = sgf.GeneformerModel.from_pretrained("tiny-test")
        sgf.GeneformerModel.from_pretrained("tiny-test")
        assert mirror.requests == ["/tiny-test/model.safetensors"]  # the second load came from the cache
    reference = sgf.GeneformerModel.from_pretrained(source.parent)
    for a, b in zip(model.module.state_dict().values(), reference.module.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert model.checkpoint == "tiny-test"


def test_module_runs_only_the_needed_layers():
    vocab = make_vocabulary("V2")
    model = tiny_model(vocab, layers=3)
    calls = []
    for i, layer in enumerate(model.module.mlm.bert.encoder.layer):
        layer.register_forward_hook(lambda *_, i=i: calls.append(i))
    model.module.mlm.cls.register_forward_hook(lambda *_: calls.append("mlm_head"))
    ids = torch.tensor([[2, 10, 11, 3]])
    model.module.encode(ids, torch.ones_like(ids), 1)
    assert calls == [0]
    assert len(model.module.mlm.bert.encoder.layer) == 3  # restored afterwards


def test_model_repr_and_config():
    vocab = make_vocabulary("V2")
    model = sgf.GeneformerModel(bert_config=tiny_bert_config(vocab), vocabulary="V2")
    assert "V2 vocabulary" in repr(model) and "untrained" in repr(model)
    assert model.module.config._attn_implementation == "sdpa"
