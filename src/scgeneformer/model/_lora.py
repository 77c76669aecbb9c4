"""Parameter-efficient fine-tuning with LoRA adapters (``peft``): their settings, and the model's LoRA methods.

Adapters are injected into the BERT encoder in place (``peft.inject_adapter_in_model``), so the module keeps its
structure: inference, perturbation and saving work unchanged, and :meth:`LoraMixin.merge_lora` folds the adapters
back into the weights. ``peft`` is an optional extra, imported only when used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from .._utils._optional import require

#: Linear layers of a BERT encoder layer, by the names LoRA targets: attention projections, and the feed-forward
#: and attention-output layers (all named ``dense``).
ATTENTION = ("query", "key", "value")
ATTENTION_AND_FFN = ("query", "key", "value", "dense")


@dataclass
class LoraSettings:
    """LoRA adapters on the encoder's linear layers.

    Parameters
    ----------
    r
        Rank of each adapter.
    alpha
        Scaling: the adapter's update is multiplied by ``alpha / r``.
    dropout
        Dropout on the adapter's input.
    target_modules
        Names of the linear layers that get adapters: ``("query", "key", "value")`` (attention, default) or with
        ``"dense"`` also the feed-forward and attention-output layers.
    """

    r: int = 8
    alpha: float = 16
    dropout: float = 0.1
    target_modules: Sequence[str] = field(default_factory=lambda: list(ATTENTION))

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            msg = f"LoRA rank r must be a positive integer, got {self.r!r}."
            raise ValueError(msg)
        if not 0 <= self.dropout < 1:
            msg = f"LoRA dropout must be in [0, 1), got {self.dropout!r}."
            raise ValueError(msg)
        unknown = set(self.target_modules) - set(ATTENTION_AND_FFN)
        if unknown or not self.target_modules:
            msg = f"LoRA target_modules must be among {ATTENTION_AND_FFN}, got {list(self.target_modules)}."
            raise ValueError(msg)
        self.target_modules = list(self.target_modules)

    def to_params(self) -> dict:
        """Plain values, saved with the model."""
        return asdict(self)


def inject_adapters(bert: torch.nn.Module, settings: LoraSettings) -> None:
    """Add LoRA adapters to ``bert`` in place (its layers stay where they are)."""
    peft = require("peft", "lora")
    config = peft.LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
    )
    peft.inject_adapter_in_model(config, bert)


def lora_layers(module: torch.nn.Module) -> list[tuple[torch.nn.Module, str, torch.nn.Module]]:
    """``(parent, attribute, layer)`` of every LoRA layer inside ``module``."""
    found = []
    for parent in module.modules():
        for name, child in parent.named_children():
            if hasattr(child, "lora_A") and hasattr(child, "get_base_layer"):
                found.append((parent, name, child))
    return found


def has_lora(module: torch.nn.Module) -> bool:
    """Whether ``module`` holds LoRA adapters."""
    return bool(lora_layers(module))


def merge_adapters(module: torch.nn.Module) -> int:
    """Fold every LoRA adapter of ``module`` into its base weight and remove the adapter; returns how many."""
    layers = lora_layers(module)
    with torch.no_grad():
        for parent, name, layer in layers:
            layer.merge()
            setattr(parent, name, layer.get_base_layer())
    return len(layers)


def is_lora_parameter(name: str) -> bool:
    """Whether a parameter name belongs to a LoRA adapter."""
    return "lora_" in name


class LoraMixin:
    """LoRA methods of :class:`~scgeneformer.GeneformerModel`: add adapters to the encoder and merge them back."""

    def add_lora(
        self,
        r: int = 8,
        alpha: float = 16,
        dropout: float = 0.1,
        target_modules: Sequence[str] = ("query", "key", "value"),
    ) -> None:
        """Add LoRA adapters (``peft``) to the encoder; training then updates only them and the task heads.

        Every training method (:meth:`train`, :meth:`train_classifier`, :meth:`train_gene_classifier`) trains the
        adapters instead of the encoder's weights, which stay as they are: a fraction of the parameters and of the
        optimiser's memory. The adapters are saved and loaded with the model, work in every tool (embeddings,
        annotation, perturbation), and :meth:`merge_lora` folds them into the weights. Needs the ``lora`` extra
        (``pip install 'scgeneformer[lora]'``).

        Parameters
        ----------
        r
            Rank of each adapter.
        alpha
            Scaling of the adapters' update (``alpha / r``).
        dropout
            Dropout on the adapters' input.
        target_modules
            Linear layers that get adapters: ``("query", "key", "value")`` (attention) or, adding ``"dense"``, the
            feed-forward and attention-output layers too.

        Examples
        --------
        >>> model = sgf.GeneformerModel.from_pretrained("Geneformer-V2-104M", adata)  # doctest: +SKIP
        >>> model.add_lora(r=8)  # doctest: +SKIP
        >>> model.train_classifier(labels_key="cell_type")  # doctest: +SKIP
        """
        if self.lora_settings is not None:
            msg = "The model has LoRA adapters already; merge them first with `merge_lora()` to add new ones."
            raise ValueError(msg)
        settings = LoraSettings(r=r, alpha=alpha, dropout=dropout, target_modules=list(target_modules))
        self._inject_lora(settings)
        self.init_params_["non_kwargs"]["lora"] = settings.to_params()

    def _inject_lora(self, settings: LoraSettings) -> None:
        inject_adapters(self.module.mlm.bert, settings)
        self.lora_settings = settings

    def merge_lora(self) -> int:
        """Fold the LoRA adapters into the encoder's weights and remove them; returns how many were merged.

        The merged model computes the same outputs without the adapters' overhead.

        Examples
        --------
        >>> model.merge_lora()  # doctest: +SKIP
        """
        merged = merge_adapters(self.module.mlm.bert)
        self.lora_settings = None
        self.init_params_["non_kwargs"]["lora"] = None
        return merged
