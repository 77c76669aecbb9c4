"""Saved-model folders keep what is not theirs, survive concurrent saves, and decide themselves what is loaded;
model cards survive hostile label names and the Hugging Face hub's YAML (issue 20, items 1, 2, 17 and 18)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import make_vocabulary, tiny_bert_config, tiny_model

import scgeneformer as sgf


def weights_of(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.module.state_dict().values()])


def snapshot(folder: Path) -> dict[str, bytes]:
    """Name → content of every file in ``folder``."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


# -- item 1: a folder that is not a saved model keeps its files ------------------------------------------------------
def test_saving_into_a_folder_that_is_not_a_saved_model_keeps_its_files(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "README.md").write_text("# My project\n\nNotes I wrote by hand.\n")
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"shard one")  # a Hugging Face sharded checkpoint
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"shard two")
    (folder / "notes.txt").write_text("keep me")
    before = snapshot(folder)
    model = tiny_model(make_vocabulary("V1"))
    with pytest.raises(ValueError, match="not a saved model"):
        model.save(folder)
    assert snapshot(folder) == before  # refused before anything was written

    with pytest.warns(UserWarning, match=r"README\.md .*not written by scgeneformer"):
        model.save(folder, overwrite=True)  # beside the foreign files, which stay as they are
    after = snapshot(folder)
    assert {name: after[name] for name in before} == before
    assert torch.equal(weights_of(sgf.GeneformerModel.load(folder)), weights_of(model))
    # saving again replaces the model; the foreign files are still not ours to replace or delete
    other = tiny_model(make_vocabulary("V1"), seed=1)
    with pytest.warns(UserWarning, match="README"):
        other.save(folder, overwrite=True)
    after = snapshot(folder)
    assert {name: after[name] for name in before} == before
    assert torch.equal(weights_of(sgf.GeneformerModel.load(folder)), weights_of(other))
    assert len(list(folder.glob("model-*.safetensors"))) == 3  # the two shards and the new weights


def test_saving_into_the_hugging_face_folder_the_model_came_from_keeps_its_readme(tmp_path):
    vocab = make_vocabulary("V1")
    folder = tmp_path / "hf"
    tiny_model(vocab).module.mlm.save_pretrained(folder)
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# The lab's published model\n")
    before = snapshot(folder)
    model = sgf.GeneformerModel.from_pretrained(folder, vocabulary="V1")
    with pytest.raises(ValueError, match="not a saved model"):
        model.save(folder)
    assert snapshot(folder) == before
    with pytest.warns(UserWarning, match="README"):
        model.save(folder, overwrite=True)
    after = snapshot(folder)
    assert {name: after[name] for name in before} == before  # README, config.json and model.safetensors untouched
    assert torch.equal(weights_of(sgf.GeneformerModel.load(folder)), weights_of(model))


def test_overwriting_a_saved_model_deletes_only_the_files_it_wrote(tmp_path):
    vocab = make_vocabulary("V1")
    folder = tmp_path / "model"
    first = tiny_model(vocab, seed=0)
    first.save(folder)
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"a shard the user put there")
    (tmp_path / "victim.txt").write_text("outside the folder")
    # a model.json may claim files; only names a save writes, inside the folder, are ever deleted
    description = json.loads((folder / "model.json").read_text())
    claimed = ["../victim.txt", str(tmp_path / "victim.txt"), "model-00001-of-00002.safetensors"]
    description["files"] = description.get("files", []) + claimed
    (folder / "model.json").write_text(json.dumps(description))
    second = tiny_model(vocab, seed=1)
    second.save(folder, overwrite=True)
    assert (folder / "model-00001-of-00002.safetensors").read_bytes() == b"a shard the user put there"
    assert (tmp_path / "victim.txt").read_text() == "outside the folder"
    assert len(list(folder.glob("model-*.safetensors"))) == 2  # first's weights deleted, second's and the shard kept
    assert torch.equal(weights_of(sgf.GeneformerModel.load(folder)), weights_of(second))
    written = json.loads((folder / "model.json").read_text())["files"]  # what the save wrote, nothing else
    assert sorted(written) == sorted([json.loads((folder / "model.json").read_text())["weights"], "README.md"])


# -- item 2: concurrent saves ----------------------------------------------------------------------------------------
HELD_SAVE = """
import sys, time
sys.path.insert(0, {tests!r})
from pathlib import Path
from helpers import make_vocabulary, tiny_model
import scgeneformer.model._model_folder as saving

real_write = saving.write_text_atomic

def held_before_the_description(path, text):
    # the fixed point: the weights are written, model.json is not yet replaced
    if Path(path).name == "model.json":
        Path({signals!r}, "held").touch()
        deadline = time.time() + 300
        while not Path({signals!r}, "release").exists() and time.time() < deadline:
            time.sleep(0.02)
    real_write(path, text)

saving.write_text_atomic = held_before_the_description
tiny_model(make_vocabulary("V1"), seed=0).save({folder!r}, overwrite=True)
"""


def test_concurrent_saves_into_one_folder_always_leave_a_loadable_folder(tmp_path):
    vocab = make_vocabulary("V1")
    folder, signals = tmp_path / "model", tmp_path / "signals"
    signals.mkdir()
    held_model, other = tiny_model(vocab, seed=0), tiny_model(vocab, seed=1)
    other.save(folder)
    script = HELD_SAVE.format(tests=str(Path(__file__).parent), signals=str(signals), folder=str(folder))
    holder = subprocess.Popen([sys.executable, "-c", script])
    outcome: dict[str, object] = {}

    def save_other():
        try:
            other.save(folder, overwrite=True)
        except Exception as e:  # noqa: BLE001 (reported by the assertion below)
            outcome["save"] = e

    def load():
        try:
            outcome["loaded"] = weights_of(sgf.GeneformerModel.load(folder))
        except Exception as e:  # noqa: BLE001
            outcome["load"] = e

    try:
        deadline = time.time() + 240
        while not (signals / "held").exists():
            assert holder.poll() is None and time.time() < deadline, "the held save did not reach its fixed point"
            time.sleep(0.05)
        saver, loader = threading.Thread(target=save_other), threading.Thread(target=load)
        saver.start()
        loader.start()
        saver.join(timeout=3)
        loader.join(timeout=1)
        # while the first save holds the folder, the second save and the load wait for it
        assert saver.is_alive() and loader.is_alive()
    finally:
        (signals / "release").touch()
        assert holder.wait(timeout=240) == 0
    saver.join(timeout=240)
    loader.join(timeout=240)
    assert not saver.is_alive() and not loader.is_alive()
    assert "save" not in outcome and "load" not in outcome, outcome
    # the load saw a complete model, one of the two; the folder holds the save that came last, with its weights
    assert any(torch.equal(outcome["loaded"], weights_of(m)) for m in (held_model, other))
    assert torch.equal(weights_of(sgf.GeneformerModel.load(folder)), weights_of(other))
    description = json.loads((folder / "model.json").read_text())
    assert sorted(p.name for p in folder.glob("model-*.safetensors")) == [description["weights"]]


# -- item 17: front matter rewritten by the hub ------------------------------------------------------------------------
def test_read_model_card_reads_front_matter_rewritten_as_yaml(tmp_path, monkeypatch):
    yaml = pytest.importorskip("yaml")
    vocab = make_vocabulary("V1")
    model = sgf.GeneformerModel(bert_config=tiny_bert_config(vocab), vocabulary="V1", classes=["B", "T 🦠"])
    model.save(tmp_path / "saved")
    card = tmp_path / "saved" / "README.md"
    facts = sgf.model.read_model_card(card)
    assert facts["classes"] == ["B", "T 🦠"]
    body = card.read_text(encoding="utf-8").split("\n---\n", 1)[1]
    # the hub's card editor writes plain (block-style) YAML, with Windows line ends for good measure
    rewritten = "---\n" + yaml.safe_dump(facts, allow_unicode=True, sort_keys=False) + "---\n" + body
    card.write_text(rewritten.replace("\n", "\r\n"), encoding="utf-8")
    assert b"classes:\r\n- B" in card.read_bytes()
    assert sgf.model.read_model_card(tmp_path / "saved") == facts
    # without PyYAML the error says which file and why
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(ValueError, match=r"README\.md.*PyYAML"):
        sgf.model.read_model_card(card)
    card.write_text("# no front matter\n")
    with pytest.raises(ValueError, match=r"README\.md has no front matter"):
        sgf.model.read_model_card(card)


# -- item 18: model.json never chooses the file; labels in the card ---------------------------------------------------
def test_model_json_cannot_point_its_weights_outside_its_folder(tmp_path):
    vocab = make_vocabulary("V1")
    tiny_model(vocab, seed=0).save(tmp_path / "mine")
    tiny_model(vocab, seed=1).save(tmp_path / "other")
    other_weights = next((tmp_path / "other").glob("model-*.safetensors"))
    description_file = tmp_path / "mine" / "model.json"
    description = json.loads(description_file.read_text())
    (tmp_path / "mine" / "chosen.safetensors").write_bytes(other_weights.read_bytes())
    for pointer in (f"../other/{other_weights.name}", str(other_weights), "chosen.safetensors"):
        # the sha256 of the other file too, so that only the location is wrong
        hostile = dict(description, weights=pointer, weights_sha256=_sha256(other_weights))
        description_file.write_text(json.dumps(hostile))
        with pytest.raises(ValueError, match="refused"):
            sgf.GeneformerModel.load(tmp_path / "mine")


def test_saved_models_load_through_symlinks_as_in_the_hub_cache(tmp_path):
    model = tiny_model(make_vocabulary("V1"))
    model.save(tmp_path / "saved")
    repository = tmp_path / "models--lab--model"
    (repository / "blobs").mkdir(parents=True)
    revision = repository / "snapshots" / ("b" * 40)
    revision.mkdir(parents=True)
    for file in (tmp_path / "saved").iterdir():
        blob = repository / "blobs" / _sha256(file)
        file.rename(blob)
        (revision / file.name).symlink_to(Path("..", "..", "blobs", blob.name))
    assert torch.equal(weights_of(sgf.GeneformerModel.load(revision)), weights_of(model))
    assert sgf.model.read_model_card(revision)["library_name"] == "scgeneformer"


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


HOSTILE_LABELS = ["B", "---", "x\n---\ny", "T 🦠 cell", 'say "hi" \\ there', "a\u2028b", "c\x85d", "k: v", "- dash"]


def test_label_names_go_into_the_model_card_safely(tmp_path):
    yaml = pytest.importorskip("yaml")
    vocab = make_vocabulary("V1")
    model = sgf.GeneformerModel(
        bert_config=tiny_bert_config(vocab), vocabulary="V1", classes=HOSTILE_LABELS, gene_classes=["🧬", "---"]
    )
    model.save(tmp_path / "saved")
    facts = sgf.model.read_model_card(tmp_path / "saved")
    assert facts["classes"] == HOSTILE_LABELS and facts["gene_classes"] == ["🧬", "---"]
    text = (tmp_path / "saved" / "README.md").read_text(encoding="utf-8")
    assert [line for line in text.split("\n") if line.strip() == "---"] == ["---", "---"]  # only the delimiters
    # the front matter as the Hugging Face hub finds and parses it (huggingface_hub.repocard's pattern, PyYAML)
    block = re.match(r"^(\s*---[\r\n]+)([\S\s]*?)([\r\n]+---(\r\n|\n|$))", text)
    assert block is not None
    parsed = yaml.safe_load(block.group(2))
    assert parsed["classes"] == HOSTILE_LABELS and parsed["gene_classes"] == ["🧬", "---"]  # no lone surrogates
    assert parsed == facts
    assert torch.equal(weights_of(sgf.GeneformerModel.load(tmp_path / "saved")), weights_of(model))
