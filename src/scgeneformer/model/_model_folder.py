"""The folder of a saved model: safetensors weights and a JSON description, written atomically and read safely.

A saved model is a folder holding ``model.json`` (the model's parameters, training history and report, the name and
sha256 of its weights file, and the names of the files its save wrote) and ``model-<sha256 prefix>.safetensors``,
with companions such as the model card. The weights are written first, under a name of their own; ``model.json`` is
then replaced in one rename. A process killed at any moment therefore leaves a folder whose ``model.json`` names a
complete weights file, the new one or the previous one. Saves lock the folder, so concurrent saves take turns and
loads wait for them. A save replaces or deletes only files that the previous ``model.json`` recorded as written by
scgeneformer, and writes into a folder holding other files only with ``overwrite=True``, leaving those files alone.
Loading reads JSON and safetensors only: nothing in the folder can run code, and ``model.json`` cannot name a
weights file other than the one its sha256 names, in its own folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._utils._files import UnsafeContentError, atomic_path, write_text_atomic
from .._utils._locks import folder_lock
from .._version import __version__

if TYPE_CHECKING:
    import torch

MODEL_FILE = "model.json"
FORMAT = "scgeneformer.GeneformerModel"
FORMAT_VERSION = 1
#: The files a save may write beside the weights and ``model.json`` (each with the prefix): card and data.
COMPANION_NAMES = ("README.md", "adata.h5ad", "mdata.h5mu")
_ANY_WEIGHTS = re.compile(r".*model-[0-9a-f]{16}\.safetensors")


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


@dataclass(frozen=True)
class Companion:
    """A file saved beside a model's weights (its card, its data), written by ``write`` to the path it is given.

    Attributes
    ----------
    name
        The file's name without the prefix: one of :data:`COMPANION_NAMES`.
    write
        Writes the file at the (temporary) path it is called with.
    required
        What to do when a file of that name that scgeneformer did not write is in the way: raise (``True``), or
        leave it, skip this file and warn (``False``).
    """

    name: str
    write: Callable[[Path], None]
    required: bool = True


def weights_name(prefix: str, digest: str) -> str:
    """The name of the weights file whose sha256 is ``digest``: the only name a ``model.json`` may give."""
    return f"{prefix}model-{digest[:16]}.safetensors"


def _is_weights_name(name: str, prefix: str) -> bool:
    return re.fullmatch(re.escape(prefix) + r"model-[0-9a-f]{16}\.safetensors", name) is not None


def _owned_files(payload: dict, prefix: str) -> set[str]:
    """The files a model's save wrote, by name, as its ``model.json`` records them.

    Only names a save can write are accepted (the weights' name and :data:`COMPANION_NAMES`, with the prefix):
    whatever else a ``model.json`` claims (``../x``, absolute paths, other files) is never replaced or deleted.
    Descriptions written before the files were recorded own their weights and their card.
    """
    files = payload.get("files")
    if not isinstance(files, list):
        files = [payload.get("weights"), f"{prefix}README.md"]
    companions = {f"{prefix}{name}" for name in COMPANION_NAMES}
    return {n for n in files if isinstance(n, str) and (n in companions or _is_weights_name(n, prefix))}


def _our_description(path: Path) -> dict | None:
    """The payload of ``path`` if it is a ``model.json`` written by scgeneformer, else ``None``."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) and payload.get("format") == FORMAT else None


def _files_of_saved_models(folder: Path) -> set[str]:
    """Names of the files in ``folder`` that belong to the models saved there (every prefix)."""
    owned = set()
    for description in folder.glob(f"*{MODEL_FILE}"):
        payload = _our_description(description)
        if payload is not None:
            owned |= {description.name} | _owned_files(payload, description.name[: -len(MODEL_FILE)])
    return owned


def _foreign_entries(folder: Path) -> list[str]:
    """Names of what ``folder`` holds that is not part of a saved model (hidden entries aside)."""
    owned = _files_of_saved_models(folder)
    return sorted(
        p.name
        for p in folder.iterdir()
        # weights files of a save killed before its model.json was replaced are not foreign (nor deleted)
        if not p.name.startswith(".") and p.name not in owned and not _ANY_WEIGHTS.fullmatch(p.name)
    )


def _check_prefix(prefix: str) -> None:
    if any(sep in prefix for sep in ("/", "\\", os.sep)) or prefix.startswith("."):
        msg = f"prefix={prefix!r} must be a plain start of a file name (no folders, not hidden)."
        raise ValueError(msg)


def write_model_folder(
    dir_path: str | os.PathLike,
    module: torch.nn.Module,
    record: ModelRecord,
    *,
    overwrite: bool = False,
    prefix: str = "",
    companions: Sequence[Companion] = (),
) -> Path:
    """Write ``module``'s weights, ``record`` and the ``companions`` into ``dir_path``; returns ``model.json``'s path.

    The folder is locked for the whole save (:func:`~scgeneformer._utils._locks.folder_lock`): two processes saving
    into it take turns, and a load waits for a save. Nothing is written into a folder that holds files that are not
    part of a saved model unless ``overwrite=True``, and then those files are left as they are: a companion whose
    name is taken by such a file is skipped with a warning (or refused, if ``required``). ``model.json`` records the
    files the save wrote (``files``); only files the previous model recorded there are replaced or deleted.
    """
    _check_prefix(prefix)
    for companion in companions:
        if companion.name not in COMPANION_NAMES:
            msg = f"{companion.name!r} is not a file a saved model may hold ({', '.join(COMPANION_NAMES)})."
            raise ValueError(msg)
    folder = Path(dir_path)
    description = folder / f"{prefix}{MODEL_FILE}"
    folder.mkdir(parents=True, exist_ok=True)
    with folder_lock(folder) as locked:
        previous = None
        if description.exists():
            previous = _our_description(description)
            if previous is None:
                msg = (
                    f"{description} was not written by scgeneformer (or is damaged): refused to replace it. Save "
                    "into another folder or with another prefix."
                )
                raise ValueError(msg)
            if not overwrite:
                msg = f"{description} exists already; pass overwrite=True to replace it."
                raise ValueError(msg)
        foreign = _foreign_entries(folder)
        if foreign and previous is None and not overwrite:
            listed = ", ".join(foreign[:6]) + (f" and {len(foreign) - 6} more" if len(foreign) > 6 else "")
            msg = (
                f"{folder} is not a saved model (nor empty): it holds {listed}. Save into a new or empty folder, or "
                "pass overwrite=True to save the model beside these files (they are left as they are)."
            )
            raise ValueError(msg)
        ours = _owned_files(previous, prefix) if previous is not None else set()
        written = []
        for companion in companions:
            target = folder / f"{prefix}{companion.name}"
            if (target.exists() or target.is_symlink()) and target.name not in ours:
                if companion.required:
                    msg = f"{target} was not written by scgeneformer: refused to replace it. Move it or save elsewhere."
                    raise ValueError(msg)
                warnings.warn(
                    f"{target} was not written by scgeneformer; it is left as it is and the model's "
                    f"{companion.name} is not written.",
                    UserWarning,
                    stacklevel=3,
                )
                continue
            written.append((companion, target))
        weights = _write_weights(folder, module, prefix, ours)
        report = record.classification_report
        payload = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "scgeneformer_version": __version__,
            "weights": weights.path.name,
            "weights_sha256": weights.digest,
            "tied_weights": weights.tied,
            "files": [weights.path.name, *(target.name for _, target in written)],
            "init_params": _plain(record.init_params),
            "setup_args": None if record.setup_args is None else _plain(record.setup_args),
            "is_trained": bool(record.is_trained),
            "history": _history_to_json(record.history),
            "classification_report": None if report is None else _plain(report),
        }
        # model.json names the new weights in one rename; the companions follow, then what the previous model wrote
        # and this one did not is deleted.
        write_text_atomic(description, json.dumps(payload, indent=1))
        for companion, target in written:
            with atomic_path(target) as temporary:
                companion.write(temporary)
        keep = set(payload["files"])
        if not locked:  # no lock on this file system: never delete what model.json names now
            current = _our_description(description)
            keep |= _owned_files(current, prefix) if current is not None else set()
        for name in sorted(ours - keep):
            (folder / name).unlink(missing_ok=True)
    return description


@dataclass
class _Weights:
    path: Path
    digest: str
    tied: dict[str, str]


def _write_weights(folder: Path, module: torch.nn.Module, prefix: str, ours: set[str]) -> _Weights:
    """Write the module's weights to ``<prefix>model-<sha256 prefix>.safetensors`` through a temporary file."""
    from safetensors.torch import save_file

    state, tied = _untied_state(module)
    temporary = folder / f".{prefix}model.safetensors.tmp-{uuid.uuid4().hex[:12]}"
    try:
        save_file(state, temporary, metadata={"format": "pt"})
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())
        digest = _sha256(temporary)
        weights = folder / weights_name(prefix, digest)
        if weights.exists() and weights.name not in ours and _sha256(weights) != digest:
            msg = f"{weights} is in the way and was not written by scgeneformer: refused to replace it."
            raise ValueError(msg)
        os.replace(temporary, weights)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return _Weights(weights, digest, tied)


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
    """A saved model as read from its folder: the weights file, its tensors (tied ones restored) and the record.

    ``files`` are the names of the files its save wrote (``None`` for folders saved before they were recorded).
    """

    weights_file: Path
    state: dict[str, torch.Tensor]
    record: ModelRecord
    files: frozenset[str] | None = None

    def load_into(self, module: torch.nn.Module) -> None:
        """Put the weights into ``module``, the model rebuilt from the record; raise if they do not fit it."""
        missing, unexpected = module.load_state_dict(self.state, strict=False)
        if missing or unexpected:
            msg = (
                f"{self.weights_file} does not fit the saved model: missing {sorted(missing)[:5]}, extra "
                f"{sorted(unexpected)[:5]}."
            )
            raise ValueError(msg)


def _weights_of(folder: Path, payload: dict, prefix: str) -> Path:
    """The weights file ``model.json`` names: ``<prefix>model-<sha256 prefix>.safetensors`` in the folder itself.

    The name follows from the recorded sha256, so a ``model.json`` (a downloaded one, say) cannot choose another
    file: ``../other/…``, absolute paths and any other name are refused. The file itself may be a symbolic link
    (the Hugging Face cache links its snapshots into ``blobs/``).
    """
    digest = payload.get("weights_sha256")
    name = payload.get("weights")
    if not isinstance(digest, str) or re.fullmatch(r"[0-9a-f]{64}", digest) is None:
        msg = f"{folder / f'{prefix}{MODEL_FILE}'} records no valid weights_sha256 ({digest!r}): corrupted."
        raise ValueError(msg)
    expected = weights_name(prefix, digest)
    if name != expected:
        msg = (
            f"{folder / f'{prefix}{MODEL_FILE}'} names the weights file {name!r}: refused, since the weights of a "
            f"saved model are {expected} in its own folder (a model.json does not choose which file is loaded)."
        )
        raise ValueError(msg)
    return folder / expected


def read_model_folder(dir_path: str | os.PathLike, prefix: str = "") -> SavedModel:
    """A folder written by :func:`write_model_folder`, its weights checked against the sha256 of ``model.json``.

    A save into the folder by another process is waited for (shared lock), so the folder is read in one state.
    """
    from safetensors.torch import load_file

    _check_prefix(prefix)
    folder = Path(dir_path)
    read_description(folder, prefix)  # clear errors for what is not a saved model, before locking
    with folder_lock(folder, shared=True):
        payload = read_description(folder, prefix)
        weights = _weights_of(folder, payload, prefix)
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
    files = frozenset(_owned_files(payload, prefix)) if isinstance(payload.get("files"), list) else None
    return SavedModel(weights, state, record, files)
