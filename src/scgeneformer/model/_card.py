"""Model cards: a ``README.md`` written beside a saved model, as the Hugging Face hub and scvi-hub show them.

The front matter holds the facts as ``key: <JSON value>`` lines (valid YAML); the text below repeats them for
people. :func:`read_model_card` reads the front matter back.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._model import GeneformerModel

CARD_FILE = "README.md"


def card_facts(model: GeneformerModel) -> dict[str, Any]:
    """What a model card records: origin, vocabulary, architecture, data, labels, metrics, package version."""
    from .._version import __version__

    config = model.module.config
    setup = model.registry_.get("setup_args", {}) if model.adata is not None else {}
    report = getattr(model, "classification_report_", None)
    facts: dict[str, Any] = {
        "library_name": "scgeneformer",
        "tags": ["single-cell", "geneformer", "scverse", "scgeneformer"],
        "base_model": model.checkpoint.split(" + ")[0] if model.checkpoint else None,
        "history": model.checkpoint,
        "vocabulary": model.vocabulary_version,
        "architecture": {
            "layers": config.num_hidden_layers,
            "hidden_size": config.hidden_size,
            "heads": config.num_attention_heads,
            "input_size": config.max_position_embeddings,
        },
        "classes": model.classes,
        "gene_classes": model.gene_classes,
        "lora": None if model.lora_settings is None else model.lora_settings.to_params(),
        "scgeneformer_version": __version__,
        "saved": date.today().isoformat(),
    }
    if model.adata is not None:
        facts["training_data"] = {
            "n_cells": int(model.adata.n_obs),
            "encoding_key": setup.get("encoding_key"),
            "labels_key": setup.get("labels_key"),
            "n_train": None if getattr(model, "train_indices", None) is None else len(model.train_indices),
            "n_validation": None
            if getattr(model, "validation_indices", None) is None
            else len(model.validation_indices),
            "n_test": None if getattr(model, "test_indices", None) is None else len(model.test_indices),
        }
    if report is not None:
        facts["metrics"] = {k: report[k] for k in ("accuracy", "macro_f1", "n_cells") if k in report}
    return facts


def write_model_card(model: GeneformerModel, folder: Path, prefix: str = "") -> Path:
    """Write ``README.md`` (``<prefix>README.md``) for a saved model; returns its path."""
    from .._utils._files import write_text_atomic

    facts = card_facts(model)
    front = "\n".join(f"{key}: {json.dumps(value)}" for key, value in facts.items())
    lines = [
        "---",
        front,
        "---",
        "",
        f"# {'Fine-tuned ' if model.classes or model.gene_classes else ''}Geneformer model",
        "",
        f"- Origin: {facts['history'] or 'a new (randomly initialised) model'}",
        f"- Vocabulary: {facts['vocabulary']} (encode data with `sgf.pp.rank_encode(adata, vocabulary="
        f"'{facts['vocabulary']}')`)",
        "- Architecture: {layers} layers, hidden size {hidden_size}, {heads} heads, input size {input_size}".format(
            **facts["architecture"]
        ),
    ]
    if isinstance(model.classes, dict):
        for task, classes in model.classes.items():
            lines.append(f"- Cell classes of `{task}`: {', '.join(map(str, classes))}")
    elif model.classes:
        lines.append(f"- Cell classes: {', '.join(map(str, model.classes))}")
    if model.gene_classes:
        lines.append(f"- Gene classes: {', '.join(map(str, model.gene_classes))}")
    data = facts.get("training_data")
    if data:
        lines.append(
            f"- Training data: {data['n_cells']} cells (labels from `{data['labels_key']}`; train/validation/test "
            f"{data['n_train']}/{data['n_validation']}/{data['n_test']})"
        )
    metrics = facts.get("metrics")
    if metrics:
        lines.append(
            f"- Test metrics: accuracy {metrics.get('accuracy', float('nan')):.4f}, macro-F1 "
            f"{metrics.get('macro_f1', float('nan')):.4f} on {metrics.get('n_cells')} cells"
        )
    lines += [
        f"- Saved with scgeneformer {facts['scgeneformer_version']} on {facts['saved']}",
        "",
        "## Use",
        "",
        "```python",
        "import scgeneformer as sgf",
        "",
        'model = sgf.GeneformerModel.load("path/to/this/folder")  # or from_pretrained("<hub repo id>")',
        f'sgf.pp.rank_encode(adata, vocabulary="{facts["vocabulary"]}")',
        "sgf.tl.annotate(adata, model)" if model.classes else "sgf.tl.embed(adata, model)",
        "```",
        "",
    ]
    path = folder / f"{prefix}{CARD_FILE}"
    write_text_atomic(path, "\n".join(lines))
    return path


def read_model_card(path: str | Path) -> dict[str, Any]:
    """The facts in a model card's front matter (a saved model's folder or its ``README.md``).

    Examples
    --------
    >>> model.save("my_classifier")  # doctest: +SKIP
    >>> sgf.model.read_model_card("my_classifier")["classes"]  # doctest: +SKIP
    ['B', 'NK', 'T']
    """
    path = Path(path)
    if path.is_dir():
        path = path / CARD_FILE
    text = path.read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        msg = f"{path} has no front matter."
        raise ValueError(msg)
    front = text[4 : text.index("\n---", 4)]
    facts = {}
    for line in front.splitlines():
        key, _, value = line.partition(": ")
        facts[key] = json.loads(value)
    return facts
