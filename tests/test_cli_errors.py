from scgeneformer.cli import cli_text


def test_error_texts_name_cli_flags():
    assert cli_text("pass `encoding_key=` to choose one") == "pass --encoding-key to choose one"
    assert cli_text("use `key_added='x'` or `batch_size=8`") == "use --key-added or --batch-size"
    assert cli_text("no Python names here") == "no Python names here"
