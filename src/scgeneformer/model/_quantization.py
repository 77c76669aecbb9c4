"""8- and 4-bit loading of the encoder with ``bitsandbytes`` (an optional extra), for inference on CUDA GPUs."""

from __future__ import annotations

from pathlib import Path

import torch

from .._utils._optional import require


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


def quantized_bert(folder: Path, bits: int, device: torch.device):
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
