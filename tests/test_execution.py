import numpy as np
import pytest
import torch
from helpers import encoded_counts, make_vocabulary, tiny_model

import scgeneformer as sgf
from scgeneformer._settings import normalize_precision


def test_one_precision_vocabulary():
    for spelling, name in [("fp32", "32"), ("32-true", "32"), ("bf16-mixed", "bf16"), ("16", "16"), ("auto", "auto")]:
        assert normalize_precision(spelling) == name
    with pytest.raises(ValueError, match="precision must be one of"):
        sgf.Execution(precision="fp8")
    execution = sgf.Execution(accelerator="cpu", precision="bf16-mixed")
    assert execution.precision == "bf16" and execution.trainer_kwargs()["precision"] == "bf16-mixed"
    assert sgf.Execution(accelerator="cpu").resolved_precision == "32"  # "auto" is fp32 off CUDA


def test_defaults_come_from_settings():
    before = (sgf.settings.token_budget, sgf.settings._progress_bar)
    try:
        assert sgf.Execution(accelerator="cpu").token_budget_for() == 8_192
        assert sgf.Execution(accelerator="cuda").token_budget_for("cuda") == 131_072
        assert sgf.Execution().token_budget_for("cuda", training=True) == 32_768
        sgf.settings.token_budget = 1000
        sgf.settings.progress_bar = True
        assert sgf.Execution().token_budget_for("cuda") == 1000
        assert sgf.Execution(token_budget=50).token_budget_for() == 50
        assert sgf.Execution().show_progress and not sgf.Execution(progress_bar=False).show_progress
        with pytest.raises(ValueError, match="token_budget"):
            sgf.settings.token_budget = 0
    finally:
        sgf.settings.token_budget, sgf.settings.progress_bar = before


def test_coercion_and_validation():
    assert sgf.Execution.coerce(None) == sgf.Execution()
    assert sgf.Execution.coerce({"batch_size": 3}).batch_size == 3
    with pytest.raises(TypeError, match="Unknown execution options"):
        sgf.Execution.coerce({"device": "cpu"})
    with pytest.raises(TypeError, match="execution must be"):
        sgf.Execution.coerce("cpu")
    with pytest.raises(ValueError, match="accelerator"):
        sgf.Execution(accelerator="tpu")
    with pytest.raises(ValueError, match="batch_size"):
        sgf.Execution(batch_size=0)
    assert not sgf.Execution().distributed and not sgf.Execution(devices=[1]).distributed
    assert sgf.Execution(devices=2).distributed and sgf.Execution(devices="auto").distributed
    assert sgf.Execution(accelerator="cpu").device == torch.device("cpu")


def test_model_predictions_match_the_tools(vocab_v2):
    adata = encoded_counts(vocab_v2)
    model = tiny_model(vocab_v2)
    sgf.tl.embed(adata, model, layer=0)
    cells = [5, 2, 9]
    latent = model.get_latent_representation(adata, cells, layer=0)
    np.testing.assert_array_equal(latent, adata.obsm["X_geneformer"][cells])
    out = model.get_embeddings(adata, np.arange(adata.n_obs) < 4, gene_embeddings=True)
    assert out.cells.shape == (4, 32) and out.genes.shape == (adata.n_vars, 32)
    with pytest.raises(ValueError, match="not set up on any data"):
        model.get_embeddings()
    copy = model.copy()
    assert copy.module is not model.module and copy.vocabulary_version == "V2"
    np.testing.assert_array_equal(copy.get_latent_representation(adata, cells, layer=0), latent)
    error = model.get_reconstruction_error(adata, seed=1)
    assert error == model.get_reconstruction_error(adata, seed=1) and error["n_masked"] > 0


def test_perturbation_stats_leave_the_global_random_generator_alone():
    import random

    rows = [(str(t), v) for t in range(5, 45) for v in np.linspace(0.9, 1.0, 3000)]
    import pandas as pd

    cells = pd.DataFrame(
        {
            "cell": "c",
            "perturbed_token": [t for t, _ in rows],
            "perturbed": [f"G{t}" for t, _ in rows],
            "perturbed_id": [f"E{t}" for t, _ in rows],
            "affected": "cell",
            "affected_token": -1,
            "cosine": 1.0,
            "shift_a": np.float32([v for _, v in rows]),
            "shift_b": np.float32([v for _, v in rows]),
        }
    )
    states = {"state_key": "s", "start_state": "a", "goal_state": "b", "alt_states": []}
    results = {"cells": cells, "params": {"genes": "all", "states": states}}
    random.seed(123)
    expected = random.random()
    random.seed(123)
    sgf.tl.perturbation_stats(results, "goal_state_shift")  # samples 100,000 of the 120,000 shifts
    assert random.random() == expected


def test_goal_states_round_trip_through_plain_values():
    states = sgf.tl.GoalStates("condition", "stim", "ctrl", ["other"])
    assert sgf.tl.GoalStates.from_params(states.to_params()) == states
    read_back = {"state_key": "condition", "start_state": "stim", "goal_state": "ctrl", "alt_states": np.array([])}
    assert sgf.tl.GoalStates.from_params(read_back).alt_states == ()
    two = {**read_back, "alt_states": np.array(["x", "y"], dtype=object)}
    assert sgf.tl.GoalStates.from_params(two).alt_states == ("x", "y")
    assert sgf.tl.GoalStates.from_params(None) is None
    with pytest.raises(ValueError, match="must all differ"):
        sgf.tl.GoalStates("c", "a", "a")


def test_training_defaults_are_documented_once():
    vocab = make_vocabulary("V1")
    assert sgf.model.PLAN_DEFAULTS == {"lr": 5e-5, "weight_decay": 0.001, "warmup_steps": 0.05, "schedule": "linear"}
    module = tiny_model(vocab).module
    plan = sgf.model.GeneformerTrainingPlan(module)
    assert (plan.lr, plan.weight_decay, plan.schedule) == (5e-5, 0.001, "linear")
