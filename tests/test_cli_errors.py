from scgeneformer.cli import cli_text


def test_error_texts_name_cli_flags():
    assert cli_text("pass `encoding_key=` to choose one") == "pass --encoding-key to choose one"
    assert cli_text("use `key_added='x'` or `batch_size=8`") == "use --key-added or --batch-size"
    assert cli_text("no Python names here") == "no Python names here"


def test_help_shows_full_option_names_at_80_columns():
    import os
    import subprocess
    import sys

    env = {**os.environ, "COLUMNS": "80"}
    for command in ("perturb", "encode", "embed", "annotate"):
        out = subprocess.run(
            [sys.executable, "-m", "scgeneformer", command, "--help"], capture_output=True, text=True, env=env
        ).stdout
        assert "--output" in out and "…" not in out
        assert max(len(line) for line in out.splitlines()) <= 80
