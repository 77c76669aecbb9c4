"""Model cards: a ``README.md`` written beside a saved model, as the Hugging Face hub and scvi-hub show them.

The front matter holds the facts as ``key: <JSON value>`` lines, which are valid YAML too: strings are JSON-escaped
(a label such as ``---`` or one with a line break stays inside its line) and characters outside ASCII are written as
they are (emoji read back whole by YAML parsers, not as halves of a surrogate pair), except those YAML takes for line
breaks or refuses. The text below repeats the facts for people, with line breaks in names escaped.
:func:`read_model_card` reads the front matter back, also after the Hugging Face hub rewrote it as plain YAML.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from .._utils._text import counted
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
        "base_model": base_model(facts.checkpoint),
        "history": _shareable_history(facts.checkpoint),
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


def base_model(checkpoint: str | None) -> str | None:
    """The card's ``base_model``: where the weights first came from, as a value that can be shared.

    The Hugging Face repository id for a published checkpoint (``ctheodoris/Geneformer``, the checkpoint's name
    stays in ``history``) or for a model loaded from the hub; for weights loaded from a local folder only the
    folder's name, never its path, which would tell readers of the card where the files lay on the author's
    machine. ``None`` for a new model.
    """
    base = _first_weights(checkpoint)
    if base is None:
        return None
    from .._hub._checkpoints import get_checkpoint
    from .._settings import HF_REPO

    return HF_REPO if get_checkpoint(base) is not None else _shareable(base)


def _first_weights(checkpoint: str | None) -> str | None:
    """The origin in a model's checkpoint label (``"<origin>[ (8-bit)] + classifier + …"``), or ``None``."""
    if not checkpoint:
        return None
    return _BITS.sub("", checkpoint.split(" + ")[0])


_BITS = re.compile(r" \(\d+-bit\)$")
# A Hugging Face repository id: "owner/name", neither absolute nor relative to the current or home folder.
_REPO_ID = re.compile(r"\A[\w][\w.-]*/[\w][\w.-]*\Z")


def _shareable(origin: str) -> str:
    """A published name or hub repository id as it is; a local path reduced to its folder's name."""
    from .._hub._checkpoints import get_checkpoint

    if get_checkpoint(origin) is not None or (_REPO_ID.match(origin) and not Path(origin).exists()):
        return origin
    return Path(origin).name or origin


def _shareable_history(checkpoint: str | None) -> str | None:
    """The checkpoint label with a local path at its start reduced to the folder's name (see :func:`base_model`)."""
    base = _first_weights(checkpoint)
    if base is None:
        return checkpoint
    return _shareable(base) + checkpoint[len(base) :]


# Characters a YAML parser reads as line breaks (NEL, LS, PS) or refuses unescaped (C1 controls, DEL, surrogates,
# U+FFFE/U+FFFF); json.dumps(ensure_ascii=False) escapes only those below U+0020.
_YAML_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff\ufffe\uffff]")
# What must not reach the Markdown text raw: anything that breaks a line.
_LINE_BREAKING = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _json_value(value: Any) -> str:
    """``value`` as one line of JSON that YAML parsers read back as the same value."""
    return _YAML_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(value, ensure_ascii=False))


def _inline(value: Any) -> str:
    """``value`` for a line of the card's text, its line breaks and control characters escaped as in JSON."""
    return _LINE_BREAKING.sub(lambda m: json.dumps(m.group())[1:-1], str(value))


def model_card(facts: CardFacts) -> str:
    """The text of a saved model's ``README.md``: front matter and a description for people."""
    matter = front_matter(facts)
    front = "\n".join(f"{key}: {_json_value(value)}" for key, value in matter.items())
    lines = [
        "---",
        front,
        "---",
        "",
        f"# {'Fine-tuned ' if facts.classes or facts.gene_classes else ''}Geneformer model",
        "",
        f"- Origin: {_inline(matter['history'] or 'a new (randomly initialised) model')}",
        f"- Vocabulary: {matter['vocabulary']} (encode data with `sgf.pp.rank_encode(adata, vocabulary="
        f"'{matter['vocabulary']}')`)",
        "- Architecture: {layers} layers, hidden size {hidden_size}, {heads} heads, input size {input_size}".format(
            **matter["architecture"]
        ),
    ]
    if isinstance(facts.classes, dict):
        for task, classes in facts.classes.items():
            lines.append(f"- Cell classes of `{_inline(task)}`: {', '.join(map(_inline, classes))}")
    elif facts.classes:
        lines.append(f"- Cell classes: {', '.join(map(_inline, facts.classes))}")
    if facts.gene_classes:
        lines.append(f"- Gene classes: {', '.join(map(_inline, facts.gene_classes))}")
    data = matter.get("training_data")
    if data:
        lines.append(
            f"- Training data: {counted(data['n_cells'], 'cell')} (labels from `{_inline(data['labels_key'])}`; "
            "train/validation/test "
            f"{data['n_train']}/{data['n_validation']}/{data['n_test']})"
        )
    metrics = matter.get("metrics")
    if metrics:
        lines.append(
            f"- Test metrics: accuracy {metrics.get('accuracy', float('nan')):.4f}, macro-F1 "
            f"{metrics.get('macro_f1', float('nan')):.4f} on {counted(metrics.get('n_cells'), 'cell')}"
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
    return "\n".join(lines)


_FRONT_MATTER = re.compile(r"\A\ufeff?\s*---[ \t]*\r?\n(.*?)(?:\r?\n)?^---[ \t]*\r?$", re.DOTALL | re.MULTILINE)


def read_model_card(path: str | Path) -> dict[str, Any]:
    """The facts in a model card's front matter (a saved model's folder or its ``README.md``).

    Reads the ``key: <JSON value>`` lines scgeneformer writes and, with PyYAML, any YAML front matter, such as the
    plain YAML the Hugging Face hub writes when a card is edited there.

    Parameters
    ----------
    path
        A saved model's folder or its ``README.md``.

    Returns
    -------
    dict
        The front matter's keys and values.

    Raises
    ------
    ValueError
        The card has no front matter, or it cannot be read (the message names the file and why).

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
    match = _FRONT_MATTER.match(text)
    if match is None:
        msg = f"{path} has no front matter (a block between two '---' lines at its start)."
        raise ValueError(msg)
    front = match.group(1)
    facts = _json_lines(front)
    if facts is not None:
        return facts
    try:
        import yaml
    except ImportError as e:
        msg = (
            f"{path}: its front matter is YAML, not the `key: <JSON value>` lines scgeneformer writes (the Hugging "
            "Face hub rewrites it so when the card is edited there), and reading YAML needs PyYAML, which is not "
            "installed (`pip install pyyaml`)."
        )
        raise ValueError(msg) from e
    try:
        facts = yaml.safe_load(front)
    except yaml.YAMLError as e:
        msg = f"{path}: its front matter is neither scgeneformer's `key: <JSON value>` lines nor valid YAML ({e})."
        raise ValueError(msg) from e
    if facts is None:
        return {}
    if not isinstance(facts, dict):
        msg = f"{path}: its front matter is not a mapping of keys to values (it is a {type(facts).__name__})."
        raise ValueError(msg)
    return _whole_characters(facts)


def _json_lines(front: str) -> dict[str, Any] | None:
    """The front matter as scgeneformer writes it (``key: <JSON value>`` lines), or ``None`` if it is not that."""
    facts = {}
    for line in front.splitlines():
        key, separator, value = line.partition(": ")
        if not separator or not key or key != key.strip():
            return None
        try:
            facts[key] = json.loads(value)
        except ValueError:
            return None
    return facts


def _whole_characters(value: Any) -> Any:
    """``value`` with the halves of surrogate pairs that YAML makes of JSON escapes of emoji joined into characters."""
    if isinstance(value, str):
        if _SURROGATE.search(value) is None:
            return value
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {_whole_characters(k): _whole_characters(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_characters(v) for v in value]
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")
