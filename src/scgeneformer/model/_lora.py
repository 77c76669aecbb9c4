"""Parameter-efficient fine-tuning with LoRA adapters (``peft``), and 8/4-bit loading (``bitsandbytes``).

Adapters are injected into the BERT encoder in place (``peft.inject_adapter_in_model``), so the module keeps its
structure: inference, perturbation and saving work unchanged, and ``merge_lora`` folds the adapters back into the
weights. Both libraries are optional extras, imported only when used.
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


def inject_lora(bert: torch.nn.Module, settings: LoraSettings) -> None:
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


def merge_lora(module: torch.nn.Module) -> int:
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


def check_quantization(quantization: str) -> int:
    """The bits of ``"8bit"``/``"4bit"``, after checking that a CUDA GPU and bitsandbytes are there."""
    bits = {"8bit": 8, "4bit": 4}.get(str(quantization))
    if bits is None:
        msg = f"quantization must be '8bit' or '4bit', got {quantization!r}."
        raise ValueError(msg)
    if not torch.cuda.is_available():
        msg = (
            f"{bits}-bit quantization (bitsandbytes) runs on CUDA GPUs only, and this machine has none; load the "
            "model without quantization (it runs on CPU, Apple MPS and CUDA)."
        )
        raise RuntimeError(msg)
    require("bitsandbytes", "quantization")
    return bits


def quantized_bert(folder, bits: int, device: torch.device):
    """A ``BertForMaskedLM`` loaded in 8 or 4 bits with bitsandbytes, on a CUDA device, for inference."""
    from transformers import BertForMaskedLM, BitsAndBytesConfig

    if bits == 8:
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:  # the reference's QLoRA settings
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_use_double_quant=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    return BertForMaskedLM.from_pretrained(
        folder, quantization_config=config, device_map={"": device.index or 0}, attn_implementation="sdpa"
    )
