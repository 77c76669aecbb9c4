import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import Mirror, make_vocabulary, shared_path

from scgeneformer._hub._download import DownloadError
from scgeneformer._hub._registry import DICTIONARY_FILES
from scgeneformer.vocabulary import Vocabulary, get_vocabulary

LOCAL_FOLDERS = {"V1": "V1_gc30M", "V2": "V2_gc104M"}


@pytest.mark.parametrize(("version", "size", "input_size"), [("V1", 25_426, 2048), ("V2", 20_275, 4096)])
def test_real_vocabularies(version, size, input_size):
    vocab = Vocabulary.from_folder(shared_path("data", "dictionaries", LOCAL_FOLDERS[version]))
    assert vocab.version == version and len(vocab) == size and vocab.input_size == input_size
    assert (vocab.pad_id, vocab.mask_id) == (0, 1)
    assert (vocab.cls_id, vocab.eos_id) == ((2, 3) if version == "V2" else (None, None))
    gapdh = vocab.token_dictionary["ENSG00000111640"]
    ids = ["ENSG00000111640", "ensg00000111640", "ENSG00000111640.15", "GAPDH", "gapdh", "nan", None, "XYZ_NOT"]
    assert vocab.map_gene_ids(ids).tolist() == [gapdh] * 5 + [-1] * 3
    assert vocab.id_to_symbol[gapdh] == "GAPDH"
    assert np.isnan(vocab.token_medians[0]) and vocab.token_medians[gapdh] > 0


def test_reference_mapping_reproduces_its_pitfalls():
    vocab = Vocabulary.from_folder(shared_path("data", "dictionaries", "V2_gc104M"))
    tokens, collapse = vocab.map_gene_ids_reference(["ENSG00000111640.15", "nan", "GAPDH", "ENSG00000111640"])
    assert tokens[0] == -1 and tokens[1] >= 0  # version suffix dropped, the string "nan" is a gene
    assert tokens[2] == tokens[3] and collapse  # a symbol and its ID collide, so the reference sums them


def test_get_vocabulary_accepts_every_form(tmp_path):
    vocab = make_vocabulary("V1")
    assert get_vocabulary(vocab) is vocab
    folder = shared_path("data", "dictionaries", "V2_gc104M")
    assert get_vocabulary(folder).version == "V2"
    assert get_vocabulary(str(folder)) is get_vocabulary(folder)
    with pytest.raises(ValueError, match="'V1', 'V2'"):
        get_vocabulary("V3")
    with pytest.raises(TypeError):
        get_vocabulary(3)
    (tmp_path / "token_dictionary_gc30M.pkl").write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(FileNotFoundError, match="four dictionary files"):
        Vocabulary.from_folder(tmp_path)


@pytest.fixture
def mirror_root(tmp_path):
    """Upstream layout (``geneformer/...``) built from the shared dictionaries."""
    root = tmp_path / "mirror"
    for version, files in DICTIONARY_FILES.items():
        for remote in files.values():
            source = shared_path("data", "dictionaries", LOCAL_FOLDERS[version], Path(remote.path).name)
            target = root / remote.path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    return root


def test_download_from_hub_is_cached(mirror_root, isolated_settings):
    with Mirror(mirror_root) as mirror:
        isolated_settings.hub_url = mirror.url
        vocab = Vocabulary.load("V2")
        assert vocab.version == "V2" and len(vocab) == 20_275
        assert sorted(mirror.requests) == sorted("/" + f.path for f in DICTIONARY_FILES["V2"].values())
        Vocabulary.load("V2")  # served from the cache: no new request
        assert len(mirror.requests) == 4
        assert get_vocabulary("V2").version == "V2"
    for remote in DICTIONARY_FILES["V2"].values():
        assert (isolated_settings.cache_dir / remote.path).stat().st_size == remote.size


def test_wrong_hash_is_refused_and_not_cached(mirror_root, isolated_settings):
    corrupted = mirror_root / DICTIONARY_FILES["V1"]["token_dictionary"].path
    corrupted.write_bytes(corrupted.read_bytes()[:-10] + b"0123456789")
    with Mirror(mirror_root) as mirror:
        isolated_settings.hub_url = mirror.url
        with pytest.raises(DownloadError, match="expected sha256"):
            Vocabulary.load("V1")
    cached = isolated_settings.cache_dir / DICTIONARY_FILES["V1"]["token_dictionary"].path
    assert not cached.exists()
    assert not [p for p in cached.parent.iterdir() if "token_dictionary" in p.name]


def test_unreachable_hub_gives_actionable_error(isolated_settings):
    isolated_settings.hub_url = "http://127.0.0.1:9/"  # discard port: connection refused
    with pytest.raises(DownloadError, match="place it at"):
        Vocabulary.load("V1")


def test_settings_from_environment(monkeypatch, tmp_path):
    from scgeneformer._settings import Settings

    monkeypatch.setenv("SGF_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("SGF_HUB_URL", "http://127.0.0.1:1/")
    settings = Settings()
    assert settings.cache_dir == tmp_path and settings.hub_url == "http://127.0.0.1:1/"
    monkeypatch.delenv("SGF_HUB_URL")
    assert "ctheodoris/Geneformer/resolve/" in settings.hub_url
