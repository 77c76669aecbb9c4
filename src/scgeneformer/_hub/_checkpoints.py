"""Registry of the published Geneformer checkpoints and their download.

Weights are fetched with pooch from the Hugging Face repository ``ctheodoris/Geneformer`` at a pinned commit and
checked against the sizes and sha256 of the upstream Git LFS objects. The ``config.json`` of each checkpoint is small
and stored in git upstream; its content is kept here, so only the weights are downloaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .._settings import HF_REVISION
from .._utils._files import write_text_atomic
from ._download import fetch
from ._registry import RemoteFile

#: Revision before the 2025-06 relayout, which still holds the gf-*-i2048/i4096 folders.
REVISION_2506 = "42dbf0ae41244b93f1c3735fa393a966ffe64dfa"

_COMMON = {
    "architectures": ["BertForMaskedLM"],
    "model_type": "bert",
    "hidden_act": "relu",
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
    "position_embedding_type": "absolute",
    "type_vocab_size": 2,
}
_V1 = {"max_position_embeddings": 2048, "vocab_size": 25_426}
_V2 = {"max_position_embeddings": 4096, "vocab_size": 20_275}


def _config(layers: int, hidden: int, heads: int, ffn: int, dropout: float, sizes: dict) -> dict:
    return (
        _COMMON
        | sizes
        | {
            "num_hidden_layers": layers,
            "hidden_size": hidden,
            "num_attention_heads": heads,
            "intermediate_size": ffn,
            "hidden_dropout_prob": dropout,
            "attention_probs_dropout_prob": dropout,
        }
    )


@dataclass(frozen=True)
class Checkpoint:
    """A published checkpoint: where its weights are, what they hash to, and the architecture they fit.

    Examples
    --------
    >>> checkpoint = sgf.model.get_checkpoint("V1-10M")
    >>> checkpoint.name, checkpoint.vocabulary
    ('Geneformer-V1-10M', 'V1')
    """

    name: str
    vocabulary: str
    weights: RemoteFile
    config: dict = field(repr=False)
    revision: str = HF_REVISION
    aliases: tuple[str, ...] = ()
    description: str = ""
    #: Class names of a published classifier, in the order of its label ids (the checkpoint says LABEL_0…).
    classes: tuple[str, ...] | None = None

    @property
    def n_parameters(self) -> int:
        """Parameter count of the masked-LM model (tied decoder), derived from the config."""
        c = self.config
        d, ffn, layers, vocab = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
        embeddings = (vocab + c["max_position_embeddings"] + c["type_vocab_size"]) * d + 2 * d
        layer = 4 * (d * d + d) + 2 * d + (d * ffn + ffn) + (ffn * d + d) + 2 * d
        head = d * d + d + 2 * d + vocab
        return embeddings + layers * layer + head

    def local_folder(self) -> Path:
        """Download (once) and return a Hugging Face model folder: ``config.json`` plus the weights."""
        from .._settings import settings

        base = settings.hub_url
        if self.revision != HF_REVISION:
            base = base.replace(HF_REVISION, self.revision)
        weights = fetch(self.weights, base_url=base, progressbar=True)
        config_path = weights.parent / "config.json"
        if not config_path.exists():
            write_text_atomic(config_path, json.dumps(self.config, indent=2))
        return weights.parent


_CHECKPOINTS = [
    Checkpoint(
        "Geneformer-V1-10M",
        "V1",
        RemoteFile(
            "Geneformer-V1-10M/model.safetensors",
            41_183_536,
            "a5e33a757431643b3697de7ef6127950cdc49e06e58d4266b3a3ab191b683f14",
        ),
        _config(6, 256, 4, 512, 0.02, _V1),
        aliases=("gf-6L-30M-i2048", "V1-10M"),
        description="original 2021 model, Genecorpus-30M",
    ),
    Checkpoint(
        "gf-12L-30M-i2048",
        "V1",
        RemoteFile(
            "gf-12L-30M-i2048/pytorch_model.bin",
            158_467_410,
            "812f8d85e5ecf9d64c268f052f6ece2c1906bc4f1aecf70d5144b2598386b615",
        ),
        _config(12, 512, 8, 1024, 0.02, _V1),
        revision=REVISION_2506,
        aliases=("geneformer-12L-30M",),
        description="12 layers, Genecorpus-30M",
    ),
    Checkpoint(
        "gf-12L-95M-i4096",
        "V2",
        RemoteFile(
            "gf-12L-95M-i4096/model.safetensors",
            152_012_980,
            "4365ba23e393fcfa0e65a94ac64a0983cd788bd23a8d4914f4ab66f85cfe043c",
        ),
        _config(12, 512, 8, 1024, 0.02, _V2),
        revision=REVISION_2506,
        description="April 2024, ~95M cells",
    ),
    Checkpoint(
        "gf-12L-95M-i4096_CLcancer",
        "V2",
        RemoteFile(
            "gf-12L-95M-i4096_CLcancer/model.safetensors",
            152_012_980,
            "2451adeed240c165634fea60ccba17063da8a2843ea9fcdcc0ce185720bf0dc2",
        ),
        _config(12, 512, 8, 1024, 0.02, _V2),
        revision=REVISION_2506,
        description="gf-12L-95M-i4096 + continual learning on ~14M cancer cells",
    ),
    Checkpoint(
        "gf-20L-95M-i4096",
        "V2",
        RemoteFile(
            "gf-20L-95M-i4096/model.safetensors",
            605_292_732,
            "db85c081a6d392448955c7d0185e26aba74507518df991ca8c69ee9108ce8bbf",
        ),
        _config(20, 896, 14, 1792, 0.02, _V2),
        revision=REVISION_2506,
        description="20 layers, April 2024, ~95M cells",
    ),
    Checkpoint(
        "Geneformer-V2-104M",
        "V2",
        RemoteFile(
            "Geneformer-V2-104M/model.safetensors",
            417_571_156,
            "fff5cba29ddd8792991fa77b4872246fbe548a178cebda3775cdc72b67780e7f",
        ),
        _config(12, 768, 12, 3072, 0.1, _V2),
        aliases=("V2-104M",),
        description="December 2024, ~104M cells",
    ),
    Checkpoint(
        "Geneformer-V2-104M_CLcancer",
        "V2",
        RemoteFile(
            "Geneformer-V2-104M_CLcancer/model.safetensors",
            417_571_156,
            "827738139bfed4bafa9d1f3df7c6146da2e3b85f7225076adc32c6eda0ba4357",
        ),
        _config(12, 768, 12, 3072, 0.1, _V2),
        aliases=("V2-104M_CLcancer",),
        description="V2-104M + continual learning on ~14M cancer cells",
    ),
    Checkpoint(
        "Geneformer-V2-316M",
        "V2",
        RemoteFile(
            "Geneformer-V2-316M/model.safetensors",
            1_265_455_076,
            "965ceccea81953d362081ef3843560a0e4fef88d396c28017881f1e94b1246f3",
        ),
        _config(18, 1152, 18, 4608, 0.1, _V2),
        aliases=("V2-316M",),
        description="December 2024, ~104M cells, current upstream default",
    ),
    Checkpoint(
        "Geneformer-V1-10M_CellClassifier_cardiomyopathies_220224",
        "V1",
        RemoteFile(
            "fine_tuned_models/Geneformer-V1-10M_CellClassifier_cardiomyopathies_220224/pytorch_model.bin",
            41_115_113,
            "12ead3bad8cf4b853bac87eadeb79c9308ae492e9d29f32da1a2c85e8586108d",
        ),
        _config(6, 256, 4, 512, 0.02, _V1) | {"architectures": ["BertForSequenceClassification"], "num_labels": 3},
        aliases=("cardiomyopathy-classifier",),
        description="V1-10M fine-tuned on cardiomyocytes: non-failing / hypertrophic / dilated (3 labels)",
        # The checkpoint's config names its labels LABEL_0..2; the reference's cardiomyopathy example labels them
        # nf, hcm, dcm in this order (non-failing, hypertrophic and dilated cardiomyopathy).
        classes=("non-failing", "hypertrophic", "dilated"),
    ),
]

CHECKPOINTS: dict[str, Checkpoint] = {c.name: c for c in _CHECKPOINTS}
_BY_ALIAS = {alias.lower(): c for c in _CHECKPOINTS for alias in (c.name, *c.aliases)}


def get_checkpoint(name: str) -> Checkpoint | None:
    """The registered checkpoint called ``name`` (or one of its aliases, any case), or ``None``.

    Examples
    --------
    >>> sgf.model.get_checkpoint("v2-104m").name
    'Geneformer-V2-104M'
    >>> sgf.model.get_checkpoint("no such model") is None
    True
    """
    return _BY_ALIAS.get(name.lower())


def list_models():
    """Published Geneformer checkpoints: name, vocabulary, layers, hidden size, parameters and download size.

    Returns
    -------
    A :class:`pandas.DataFrame` indexed by checkpoint name.

    Examples
    --------
    >>> sgf.list_models().loc["Geneformer-V1-10M", "layers"]
    6
    """
    import pandas as pd

    rows = [
        {
            "name": c.name,
            "vocabulary": c.vocabulary,
            "input_size": c.config["max_position_embeddings"],
            "layers": c.config["num_hidden_layers"],
            "hidden_size": c.config["hidden_size"],
            "parameters": c.n_parameters,
            "download_MB": round(c.weights.size / 1e6, 1),
            "aliases": ", ".join(c.aliases),
            "description": c.description,
        }
        for c in _CHECKPOINTS
    ]
    return pd.DataFrame(rows).set_index("name")
