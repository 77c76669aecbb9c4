"""Reading Hugging Face model folders (published checkpoints and others): config, weights and classification heads."""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .._settings import logger
from .._utils._files import UnsafeContentError

#: Vocabulary sizes of the two Geneformer vocabularies, used to recognise a checkpoint's vocabulary.
VOCABULARY_BY_SIZE = {25_426: "V1", 20_275: "V2"}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_LAYER = re.compile(r"encoder\.layer\.(\d+)\.")


def weight_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor in a Hugging Face folder's weights, read without executing code.

    safetensors headers are read directly; ``pytorch_model.bin`` goes through ``torch.load(weights_only=True)``.
    """
    safetensors_file = folder / "model.safetensors"
    try:
        if safetensors_file.is_file():
            from safetensors import safe_open

            with safe_open(safetensors_file, framework="pt") as f:
                return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True, mmap=True)
        return {name: tuple(tensor.shape) for name, tensor in state.items()}
    except Exception as e:  # safetensors, torch.load and pickle raise various types
        unsafe = "Weights only load failed" in str(e) or "Unsupported global" in str(e)
        if unsafe:
            msg = f"{folder}: refused: unsafe content (the weights file is a pickle that would run code): {e}"
            raise UnsafeContentError(msg) from e
        msg = f"The weights in {folder} could not be read; the file is corrupted or truncated ({type(e).__name__}: {e})"
        raise ValueError(msg) from e


def _shape_of(shapes: dict, suffix: str) -> tuple[int, ...] | None:
    for name, shape in shapes.items():
        if name.endswith(suffix):
            return shape
    return None


def check_weights_against_config(folder: Path, config: dict, vocabulary: str | None) -> None:
    """Refuse weights that do not fit their ``config.json`` or the requested vocabulary, naming what differs."""
    shapes = weight_shapes(folder)
    problems = []
    words = _shape_of(shapes, "embeddings.word_embeddings.weight")
    if words is None:
        msg = f"{folder} holds no BERT word embeddings (embeddings.word_embeddings.weight): not a Geneformer model."
        raise ValueError(msg)
    if words[0] != config.get("vocab_size"):
        problems.append(f"vocab_size is {config.get('vocab_size')} but the word embeddings have {words[0]} rows")
    if words[1] != config.get("hidden_size"):
        problems.append(f"hidden_size is {config.get('hidden_size')} but the embeddings have {words[1]} columns")
    positions = _shape_of(shapes, "embeddings.position_embeddings.weight")
    if positions is not None and positions[0] != config.get("max_position_embeddings"):
        problems.append(
            f"max_position_embeddings is {config.get('max_position_embeddings')} but the position embeddings have "
            f"{positions[0]} rows"
        )
    layers = {int(m.group(1)) for name in shapes if (m := _LAYER.search(name))}
    n_layers = max(layers) + 1 if layers else 0
    if n_layers != config.get("num_hidden_layers"):
        expected = config.get("num_hidden_layers")
        problems.append(f"num_hidden_layers is {expected} but the weights hold {n_layers} layers")
    if problems:
        msg = f"{folder}/config.json does not match its weights: " + "; ".join(problems) + "."
        raise ValueError(msg)
    known = VOCABULARY_BY_SIZE.get(words[0])
    if vocabulary is not None and known is not None and known != vocabulary:
        msg = (
            f"The weights in {folder} have {words[0]:,} token embeddings, the size of the {known} vocabulary, not of "
            f"{vocabulary}; pass vocabulary={known!r} (and encode the data with it)."
        )
        raise ValueError(msg)


@dataclass
class ClassifierHead:
    """The head of a Hugging Face classification checkpoint, read from its weights.

    ``kind`` is ``"cell"`` (``BertForSequenceClassification``: pooler and linear layer on the first token) or
    ``"gene"`` (``BertForTokenClassification``: a linear layer on every token).
    """

    kind: str
    labels: list[str]
    weight: torch.Tensor
    bias: torch.Tensor
    pooler: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def consumed(self) -> set[str]:
        """Names of the checkpoint tensors this head uses."""
        names = {"classifier.weight", "classifier.bias"}
        if self.pooler is not None:
            names |= {"bert.pooler.dense.weight", "bert.pooler.dense.bias"}
        return names


_HEAD_KINDS = {"BertForSequenceClassification": "cell", "BertForTokenClassification": "gene"}


def read_tensors(folder: Path, names: set[str]) -> dict[str, torch.Tensor]:
    """The named tensors of a Hugging Face folder's weights (those present), read without executing code."""
    safetensors_file = folder / "model.safetensors"
    if safetensors_file.is_file():
        from safetensors import safe_open

        with safe_open(safetensors_file, framework="pt") as f:
            return {name: f.get_tensor(name) for name in names if name in f.keys()}
    state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    return {name: state[name] for name in names if name in state}


def classifier_head(folder: Path, config: dict) -> ClassifierHead | None:
    """The classification head of a ``BertForSequenceClassification``/``BertForTokenClassification`` folder."""
    architectures = config.get("architectures") or []
    kind = next((_HEAD_KINDS[a] for a in architectures if a in _HEAD_KINDS), None)
    if kind is None:
        return None
    tensors = read_tensors(
        folder, {"classifier.weight", "classifier.bias", "bert.pooler.dense.weight", "bert.pooler.dense.bias"}
    )
    if "classifier.weight" not in tensors:
        msg = f"{folder} is a {architectures[0]} checkpoint without its classifier weights."
        raise ValueError(msg)
    n_labels = tensors["classifier.weight"].shape[0]
    id2label = config.get("id2label") or {}
    labels = [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(n_labels)]
    pooler = None
    if kind == "cell":
        if "bert.pooler.dense.weight" not in tensors:
            msg = f"{folder} is a sequence classifier without its pooler weights (bert.pooler.dense)."
            raise ValueError(msg)
        pooler = (tensors["bert.pooler.dense.weight"], tensors["bert.pooler.dense.bias"])
    return ClassifierHead(kind, labels, tensors["classifier.weight"], tensors["classifier.bias"], pooler)


def load_hf_weights(folder: Path, vocabulary: str | None = None):
    """A ``BertForMaskedLM`` with a Hugging Face folder's weights, and the folder's classification head (or ``None``).

    The model uses SDPA attention and is checked for completeness. Missing encoder or embedding weights are an error
    naming them; weights the model does not use are reported in a warning; a missing masked-gene head (classifier
    checkpoints) is initialised and logged.
    """
    import json

    from transformers import BertForMaskedLM
    from transformers.utils import logging as hf_logging

    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        msg = f"{folder} has no {' or '.join(WEIGHT_FILES)}."
        raise FileNotFoundError(msg)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        msg = f"{folder}/config.json is not a readable JSON file ({e})."
        raise ValueError(msg) from e
    check_weights_against_config(folder, config, vocabulary)
    head = classifier_head(folder, config)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report goes to the terminal; the checks below say what matters
    hf_logging.disable_progress_bar()
    try:
        model, info = BertForMaskedLM.from_pretrained(folder, attn_implementation="sdpa", output_loading_info=True)
    except Exception as e:  # safetensors, torch.load and transformers raise various types
        msg = (
            f"The weights in {folder} could not be read; the file is corrupted or truncated ({type(e).__name__}: {e})."
        )
        raise ValueError(msg) from e
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
        logging.getLogger("transformers").setLevel(logging.WARNING)
    missing = sorted(info.get("missing_keys", []))
    encoder_missing = [k for k in missing if k.startswith("bert.")]
    if encoder_missing or info.get("mismatched_keys"):
        more = len(encoder_missing) - 6
        listed = ", ".join(encoder_missing[:6]) + (f" and {more} more" if more > 0 else "")
        msg = f"The weights in {folder} are incomplete: missing {listed or info.get('mismatched_keys')}."
        raise ValueError(msg)
    if missing:
        logger.info("%s has no masked-gene head (%d tensors); it is initialised randomly.", folder, len(missing))
    unexpected = sorted(set(info.get("unexpected_keys", [])) - (head.consumed if head is not None else set()))
    if unexpected:
        warnings.warn(
            f"{folder} holds {len(unexpected)} tensors the masked-gene model does not use "
            f"({', '.join(unexpected[:4])}{', …' if len(unexpected) > 4 else ''}); they are ignored.",
            UserWarning,
            stacklevel=3,
        )
    return model, head


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
