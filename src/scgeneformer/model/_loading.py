"""Reading published and Hugging Face checkpoints, and what a model needs when it is not set up on data."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

#: Vocabulary sizes of the two Geneformer vocabularies, used to recognise a checkpoint's vocabulary.
VOCABULARY_BY_SIZE = {25_426: "V1", 20_275: "V2"}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def data_free_registry(model_name: str) -> dict:
    """A minimal registry for a model that is not set up on any AnnData (scvi-tools needs one)."""
    import scvi

    return {
        "scvi_version": scvi.__version__,
        "model_name": model_name,
        "setup_method_name": "setup_anndata",
        "setup_args": {},
        "field_registries": {
            "X": {
                "data_registry": {},
                "state_registry": {"column_names": np.array([], dtype=object)},
                "summary_stats": {},
            }
        },
    }


def load_hf_weights(folder: Path):
    """A ``BertForMaskedLM`` with the weights of a Hugging Face folder (SDPA attention)."""
    from transformers import BertForMaskedLM
    from transformers.utils import logging as hf_logging

    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        msg = f"{folder} has no {' or '.join(WEIGHT_FILES)}."
        raise FileNotFoundError(msg)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # classifier checkpoints: the unused head and missing MLM head are expected
    hf_logging.disable_progress_bar()
    try:
        return BertForMaskedLM.from_pretrained(folder, attn_implementation="sdpa")
    except Exception as e:  # safetensors, torch.load and transformers raise various types
        msg = (
            f"The weights in {folder} could not be read; the file is corrupted or truncated ({type(e).__name__}: {e})."
        )
        raise ValueError(msg) from e
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
        logging.getLogger("transformers").setLevel(logging.WARNING)


def plain_config(config) -> dict:
    """The BERT configuration fields the model is rebuilt from, as a plain dict (saved with the model)."""
    keys = (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "hidden_act",
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "max_position_embeddings",
        "type_vocab_size",
        "initializer_range",
        "layer_norm_eps",
        "pad_token_id",
        "position_embedding_type",
    )
    return {k: getattr(config, k) for k in keys if hasattr(config, k)}
