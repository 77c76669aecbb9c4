"""Issue 22 item 6: fine-tuning prints no VAE metric names and no advertisements; the history keeps our metrics."""

import pytest
from helpers import labelled_classifier, make_vocabulary

import scgeneformer as sgf

NOISE = ("elbo", "kl_local", "kl_global", "reconstruction_loss", "rec_loss", "litlogger", "litmodels", "Tip")


@pytest.fixture
def verbosity():
    saved = sgf.settings.verbosity
    yield
    sgf.settings.verbosity = saved


@pytest.mark.parametrize("level", ["warning", "info"])
def test_fine_tuning_prints_only_about_the_run(level, verbosity, capfd):
    _, model = labelled_classifier(make_vocabulary("V2"))
    sgf.settings.verbosity = level
    capfd.readouterr()
    model.train_classifier(max_epochs=2, execution={"accelerator": "cpu", "batch_size": 8})
    out, err = capfd.readouterr()
    printed = out + err
    assert not [word for word in NOISE if word in printed], printed
    if level == "info":  # the model summary is information at "info": it lists the model, not ELBO metrics
        assert "GeneformerModule" in printed
    else:
        assert "GeneformerModule" not in printed and "GPU available" not in printed
    assert {"train_loss", "validation_loss", "accuracy_train", "validation_macro_f1"} <= set(model.history_)
    assert not [key for key in model.history_ if "elbo" in key or "kl_" in key]
