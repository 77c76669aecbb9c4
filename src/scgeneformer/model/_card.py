"""Model cards: a ``README.md`` written beside a saved model, as the Hugging Face hub and scvi-hub show them.

The front matter holds the facts as ``key: <JSON value>`` lines (valid YAML); the text below repeats them for
people. :func:`read_model_card` reads the front matter back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from .._utils._files import write_text_atomic
from .._version import __version__

CARD_FILE = "README.md"


@dataclass(frozen=True)
class CardFacts:
    """What a model knows about itself, in plain values: the model gathers them, the card is written from them.

    Attributes
    ----------
    checkpoint
        Where the weights came from and how they were trained (e.g. ``"Geneformer-V1-10M + classifier"``).
    vocabulary
        ``"V1"`` or ``"V2"``.
    architecture
        ``layers``, ``hidden_size``, ``heads`` and ``input_size`` of the encoder.
    classes, gene_classes
        Class names of the cell- and gene-classification heads (``{task: names}`` for a multitask classifier).
    lora
        Settings of the model's LoRA adapters.
    training_data
        ``n_cells``, ``encoding_key``, ``labels_key`` and the sizes of the splits, for a model set up on data.
    metrics
        Test ``accuracy``, ``macro_f1`` and ``n_cells`` of a trained classifier.
    """

    checkpoint: str | None
    vocabulary: str
    architecture: dict[str, int]
    classes: list[str] | dict[str, list[str]] | None = None
    gene_classes: list[str] | None = None
    lora: dict | None = None
    training_data: dict | None = None
    metrics: dict | None = None


def front_matter(facts: CardFacts) -> dict[str, Any]:
    """The card's front matter: origin, vocabulary, architecture, data, labels, metrics, package version."""
    matter: dict[str, Any] = {
        "library_name": "scgeneformer",
        "tags": ["single-cell", "geneformer", "scverse", "scgeneformer"],
        "base_model": facts.checkpoint.split(" + ")[0] if facts.checkpoint else None,
        "history": facts.checkpoint,
        "vocabulary": facts.vocabulary,
        "architecture": facts.architecture,
        "classes": facts.classes,
        "gene_classes": facts.gene_classes,
        "lora": facts.lora,
        "scgeneformer_version": __version__,
        "saved": date.today().isoformat(),
    }
    if facts.training_data is not None:
        matter["training_data"] = facts.training_data
    if facts.metrics is not None:
        matter["metrics"] = facts.metrics
    return matter


def write_model_card(facts: CardFacts, folder: Path, prefix: str = "") -> Path:
    """Write ``README.md`` (``<prefix>README.md``) for a saved model; returns its path."""
    matter = front_matter(facts)
    front = "\n".join(f"{key}: {json.dumps(value)}" for key, value in matter.items())
    lines = [
        "---",
        front,
        "---",
        "",
        f"# {'Fine-tuned ' if facts.classes or facts.gene_classes else ''}Geneformer model",
        "",
        f"- Origin: {matter['history'] or 'a new (randomly initialised) model'}",
        f"- Vocabulary: {matter['vocabulary']} (encode data with `sgf.pp.rank_encode(adata, vocabulary="
        f"'{matter['vocabulary']}')`)",
        "- Architecture: {layers} layers, hidden size {hidden_size}, {heads} heads, input size {input_size}".format(
            **matter["architecture"]
        ),
    ]
    if isinstance(facts.classes, dict):
        for task, classes in facts.classes.items():
            lines.append(f"- Cell classes of `{task}`: {', '.join(map(str, classes))}")
    elif facts.classes:
        lines.append(f"- Cell classes: {', '.join(map(str, facts.classes))}")
    if facts.gene_classes:
        lines.append(f"- Gene classes: {', '.join(map(str, facts.gene_classes))}")
    data = matter.get("training_data")
    if data:
        lines.append(
            f"- Training data: {data['n_cells']} cells (labels from `{data['labels_key']}`; train/validation/test "
            f"{data['n_train']}/{data['n_validation']}/{data['n_test']})"
        )
    metrics = matter.get("metrics")
    if metrics:
        lines.append(
            f"- Test metrics: accuracy {metrics.get('accuracy', float('nan')):.4f}, macro-F1 "
            f"{metrics.get('macro_f1', float('nan')):.4f} on {metrics.get('n_cells')} cells"
        )
    lines += [
        f"- Saved with scgeneformer {matter['scgeneformer_version']} on {matter['saved']}",
        "",
        "## Use",
        "",
        "```python",
        "import scgeneformer as sgf",
        "",
        'model = sgf.GeneformerModel.load("path/to/this/folder")  # or from_pretrained("<hub repo id>")',
        f'sgf.pp.rank_encode(adata, vocabulary="{matter["vocabulary"]}")',
        "sgf.tl.annotate(adata, model)" if facts.classes else "sgf.tl.embed(adata, model)",
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
