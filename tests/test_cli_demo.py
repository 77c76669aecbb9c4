"""``scgeneformer --local-files DIR demo``: the global option, as documented, serves the demo."""

from helpers import shared_path

import scgeneformer as sgf
from scgeneformer.cli import main


def test_demo_takes_the_global_local_files_option(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sgf.settings, "_cache_dir", tmp_path)
    monkeypatch.setattr(sgf.settings, "_hub_url", "http://127.0.0.1:9/")  # any download attempt would fail
    monkeypatch.setattr(sgf.settings, "_local_files", None)
    monkeypatch.setattr(sgf.settings, "_verbosity", None)
    monkeypatch.delenv("SGF_LOCAL_FILES", raising=False)
    monkeypatch.chdir(tmp_path)  # no ../shared beside the working directory to fall back on
    main(["--local-files", str(shared_path()), "demo"])
    out = capsys.readouterr().out
    assert f"taken from local copies in {shared_path()}" in out
    assert "using the test checkpoint" in out and "embed: 134 cells x 64 dimensions" in out
