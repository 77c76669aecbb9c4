"""The folder of a saved model: safetensors weights and a JSON description, written atomically and read safely.

A saved model is a folder holding ``model.json`` (the model's parameters, training history and report, and the name
and sha256 of its weights file) and ``model-<sha256 prefix>.safetensors``. The weights are written first, under a
name of their own; ``model.json`` is then replaced in one rename. A process killed at any moment therefore leaves a
folder whose ``model.json`` names a complete weights file, the new one or the previous one. Loading reads JSON and
safetensors only: nothing in the folder can run code.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._utils._files import UnsafeContentError, write_text_atomic
from .._version import __version__

if TYPE_CHECKING:
    import torch

MODEL_FILE = "model.json"
FORMAT = "scgeneformer.GeneformerModel"
FORMAT_VERSION = 1


@dataclass
class ModelRecord:
    """What ``model.json`` records of a model besides its weights, in plain values.

    Attributes
    ----------
    init_params
        The model's constructor arguments (``init_params_["non_kwargs"]``): it is rebuilt from them.
    setup_args
        Arguments of ``setup_anndata`` of the data the model was set up on (``None``: no data).
    is_trained
        Whether the model was trained.
    history
        Training history: name → DataFrame (``None``: none recorded).
    classification_report
        Test-set report of a trained cell classifier.
    """

    init_params: dict
    setup_args: dict | None = None
    is_trained: bool = False
    history: dict | None = None
    classification_report: dict | None = None


def _plain(value: Any) -> Any:
    """JSON-ready copy of nested dicts/lists/arrays/numpy scalars."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def _history_to_json(history: dict | None) -> dict:
    out = {}
    for key, frame in (history or {}).items():
        out[key] = {
            "index": _plain(frame.index.to_numpy()),
            "index_name": frame.index.name,
            "columns": [str(c) for c in frame.columns],
            "values": _plain(frame.to_numpy()),
        }
    return out


def _history_from_json(history: dict) -> dict:
    import pandas as pd

    out = {}
    for key, part in history.items():
        frame = pd.DataFrame(part["values"], index=part["index"], columns=part["columns"], dtype=float)
        frame.index.name = part.get("index_name")
        out[key] = frame
    return out


def _untied_state(module) -> tuple[dict, dict[str, str]]:
    """The module's state dict without duplicates of tied tensors, and which name each duplicate aliases."""
    state, tied, seen = {}, {}, {}
    for name, tensor in module.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
        if tensor.numel() and key in seen:
            tied[name] = seen[key]
            continue
        seen[key] = name
        state[name] = tensor.detach().cpu().contiguous()
    return state, tied


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_model_folder(
    dir_path: str | os.PathLike,
    module: torch.nn.Module,
    record: ModelRecord,
    *,
    overwrite: bool = False,
    prefix: str = "",
) -> Path:
    """Write ``module``'s weights and ``record`` into ``dir_path`` (see above); returns the path of ``model.json``."""
    from safetensors.torch import save_file

    folder = Path(dir_path)
    description = folder / f"{prefix}{MODEL_FILE}"
    if description.exists() and not overwrite:
        msg = f"{description} exists already; pass overwrite=True to replace it."
        raise ValueError(msg)
    folder.mkdir(parents=True, exist_ok=True)
    state, tied = _untied_state(module)
    temporary = folder / f".{prefix}model.safetensors.tmp-{uuid.uuid4().hex[:12]}"
    try:
        save_file(state, temporary, metadata={"format": "pt"})
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())
        digest = _sha256(temporary)
        weights = folder / f"{prefix}model-{digest[:16]}.safetensors"
        os.replace(temporary, weights)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    report = record.classification_report
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "scgeneformer_version": __version__,
        "weights": weights.name,
        "weights_sha256": digest,
        "tied_weights": tied,
        "init_params": _plain(record.init_params),
        "setup_args": None if record.setup_args is None else _plain(record.setup_args),
        "is_trained": bool(record.is_trained),
        "history": _history_to_json(record.history),
        "classification_report": None if report is None else _plain(report),
    }
    write_text_atomic(description, json.dumps(payload, indent=1))
    # Only now, with model.json naming the new weights, are older weights files of this prefix removed.
    for old in folder.glob(f"{prefix}model-*.safetensors"):
        if old != weights:
            old.unlink(missing_ok=True)
    return description


def read_description(folder: Path, prefix: str = "") -> dict:
    """The parsed ``model.json`` of a saved model, with clear errors for what is not one."""
    description = folder / f"{prefix}{MODEL_FILE}"
    if not folder.is_dir():
        msg = f"No saved model at {folder}: the folder does not exist."
        raise FileNotFoundError(msg)
    if not description.is_file():
        if (folder / "config.json").is_file():
            msg = (
                f"{folder} is a Hugging Face model folder (config.json and weights), not a model saved with "
                "`model.save`: load it with `sgf.GeneformerModel.from_pretrained(path)`."
            )
            raise ValueError(msg)
        if (folder / f"{prefix}model.pt").is_file():
            msg = (
                f"{folder / f'{prefix}model.pt'} is a pickle (scvi-tools' format): refused: unsafe content, since "
                "loading a pickle can run code. Models saved by scgeneformer are JSON and safetensors."
            )
            raise UnsafeContentError(msg)
        msg = f"{folder} holds no {description.name}: not a model saved with `model.save`."
        raise FileNotFoundError(msg)
    try:
        payload = json.loads(description.read_text())
    except ValueError as e:
        msg = f"{description} is corrupted or truncated (not valid JSON: {e})."
        raise ValueError(msg) from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        msg = f"{description} does not describe a GeneformerModel (format {payload.get('format')!r})."
        raise ValueError(msg)
    if payload.get("format_version", 0) > FORMAT_VERSION:
        msg = f"{description} was written by a newer scgeneformer (format {payload['format_version']}); upgrade."
        raise ValueError(msg)
    return payload


@dataclass
class SavedModel:
    """A saved model as read from its folder: the weights file, its tensors (tied ones restored) and the record."""

    weights_file: Path
    state: dict[str, torch.Tensor]
    record: ModelRecord

    def load_into(self, module: torch.nn.Module) -> None:
        """Put the weights into ``module``, the model rebuilt from the record; raise if they do not fit it."""
        missing, unexpected = module.load_state_dict(self.state, strict=False)
        if missing or unexpected:
            msg = (
                f"{self.weights_file} does not fit the saved model: missing {sorted(missing)[:5]}, extra "
                f"{sorted(unexpected)[:5]}."
            )
            raise ValueError(msg)


def read_model_folder(dir_path: str | os.PathLike, prefix: str = "") -> SavedModel:
    """A folder written by :func:`write_model_folder`, its weights checked against the sha256 of ``model.json``."""
    from safetensors.torch import load_file

    folder = Path(dir_path)
    payload = read_description(folder, prefix)
    weights = folder / payload["weights"]
    if not weights.is_file():
        msg = f"{folder} is incomplete: its weights file {payload['weights']} is missing."
        raise FileNotFoundError(msg)
    if _sha256(weights) != payload["weights_sha256"]:
        msg = f"{weights} is corrupted or truncated: its sha256 differs from the one recorded in {MODEL_FILE}."
        raise ValueError(msg)
    try:
        state = load_file(weights)
    except Exception as e:  # safetensors raises its own error types
        msg = f"{weights} is corrupted or truncated ({type(e).__name__}: {e})."
        raise ValueError(msg) from e
    for alias, name in payload.get("tied_weights", {}).items():
        state[alias] = state[name]
    report = payload.get("classification_report")
    if report is not None:
        for key in ("confusion_matrix", "test_cells"):
            if key in report:
                report[key] = np.asarray(report[key])
    record = ModelRecord(
        init_params=payload["init_params"],
        setup_args=payload.get("setup_args"),
        is_trained=payload.get("is_trained", False),
        history=_history_from_json(payload.get("history", {})),
        classification_report=report,
    )
    return SavedModel(weights, state, record)
