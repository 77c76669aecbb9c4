import pytest
from helpers import shared_path

import scgeneformer as sgf
from scgeneformer.cli import main


def test_bundled_example():
    adata = sgf.datasets.pbmc_example()
    assert adata.n_obs == 134 and "ensembl_id" in adata.var and adata.X.dtype.kind == "i"


def test_demo_runs_offline_from_local_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sgf.settings, "_cache_dir", tmp_path)
    monkeypatch.setattr(sgf.settings, "_hub_url", "http://127.0.0.1:9/")  # any download attempt would fail
    monkeypatch.setattr(sgf.settings, "_local_files", None)
    monkeypatch.setattr(sgf.settings, "_verbosity", None)
    main(["demo", "--local-files", str(shared_path())])
    out = capsys.readouterr().out
    assert "taken from local copies" in out and "134 cells encoded" in out
    assert "using the test checkpoint" in out and "embed: 134 cells x 64 dimensions" in out
    assert len(list((tmp_path / "geneformer" / "gene_dictionaries_30m").glob("*.pkl"))) == 4  # copied into the cache


def test_seed_cache_ignores_files_with_other_content(tmp_path, monkeypatch):
    from scgeneformer._hub._download import seed_cache
    from scgeneformer._hub._registry import DICTIONARY_FILES

    monkeypatch.setattr(sgf.settings, "_cache_dir", tmp_path / "cache")
    remote = DICTIONARY_FILES["V1"]["token_dictionary"]
    fake = tmp_path / "src" / "token_dictionary_gc30M.pkl"
    fake.parent.mkdir()
    fake.write_bytes(b"x" * remote.size)
    assert seed_cache(tmp_path / "src") == []
    with pytest.raises(FileNotFoundError):
        (tmp_path / "cache" / remote.path).stat()
