"""How work runs: device, processes, precision, batch size and progress display, in one small object.

Every tool and training method takes ``execution=``: an :class:`Execution`, a dict of its fields, or ``None`` for
the package defaults in :data:`scgeneformer.settings`. One vocabulary of precisions serves the inference loop in this
process (autocast) and Lightning runs (training, and inference over several processes or devices).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from .._settings import ACCELERATORS, LIGHTNING_PRECISION, normalize_precision

if TYPE_CHECKING:
    import torch

#: Default padded tokens per batch by device type, used when neither the call nor ``sgf.settings`` sets a budget.
#: On CPU small batches stay in cache; on GPUs large ones keep the device busy.
DEFAULT_TOKEN_BUDGET = {"cpu": 8_192, "cuda": 131_072, "mps": 32_768}
#: The same for training, where activations and gradients of the whole batch are kept.
TRAINING_TOKEN_BUDGET = {"cpu": 8_192, "cuda": 32_768, "mps": 16_384}


@dataclasses.dataclass(frozen=True)
class Execution:
    """How a computation runs. Fields left at ``None`` take their value from :data:`scgeneformer.settings`.

    Parameters
    ----------
    accelerator
        ``"auto"`` (CUDA, then Apple MPS, then CPU), ``"cpu"``, ``"cuda"`` (or ``"gpu"``) or ``"mps"``.
    devices
        ``None``: run in this process on one device (for ``"cuda"``, the current one; ``[1]`` picks ``cuda:1``).
        An int > 1, a list of several device indices, or ``"auto"``: spread the work over processes through
        Lightning with ``strategy`` (e.g. ``devices=4, strategy="ddp"``); every process receives all results.
        Training always runs through Lightning (``None`` there means Lightning's ``"auto"``).
    strategy
        Lightning strategy for multi-process runs (``"ddp"``, ``"ddp_spawn"``, ``"deepspeed"`` …).
    num_nodes
        Machines of a multi-node Lightning run.
    precision
        ``"auto"`` (bf16 autocast on CUDA where supported, fp16 otherwise; fp32 elsewhere), ``"32"``, ``"bf16"`` or
        ``"16"``; Lightning's and torch's spellings (``"bf16-mixed"``, ``"fp32"`` …) are accepted too.
    token_budget
        Padded tokens per batch (cells × the batch's longest cell). Default: ``sgf.settings.token_budget``, else
        for inference 8,192 on CPU, 131,072 on CUDA and 32,768 on MPS, for training 8,192 on CPU, 32,768 on CUDA and
        16,384 on MPS. Inference results do not depend on it; for training it is the batch size.
    batch_size
        Optional cap on the cells of a batch.
    num_workers
        Data-loader worker processes that read and pad batches while the model computes (training, and inference
        through Lightning). ``0``: read in the computing process.
    progress_bar
        Show progress bars.

    Examples
    --------
    >>> run_on_4_gpus = sgf.Execution(accelerator="cuda", devices=4, strategy="ddp")
    >>> sgf.tl.embed(adata, model, execution=run_on_4_gpus)  # doctest: +SKIP
    >>> sgf.tl.embed(adata, model, execution={"token_budget": 4096, "progress_bar": False})  # doctest: +SKIP
    """

    accelerator: str | None = None
    devices: int | list[int] | str | None = None
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str | None = None
    token_budget: int | None = None
    batch_size: int | None = None
    num_workers: int = 0
    progress_bar: bool | None = None

    def __post_init__(self) -> None:
        if self.accelerator is not None and self.accelerator not in ACCELERATORS:
            msg = f"accelerator must be one of {ACCELERATORS}, got {self.accelerator!r}."
            raise ValueError(msg)
        if self.precision is not None:
            object.__setattr__(self, "precision", normalize_precision(self.precision))
        for name in ("token_budget", "batch_size", "num_nodes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                msg = f"{name} must be a positive integer, got {value!r}."
                raise ValueError(msg)
        if not isinstance(self.num_workers, int) or isinstance(self.num_workers, bool) or self.num_workers < 0:
            msg = f"num_workers must be a non-negative integer, got {self.num_workers!r}."
            raise ValueError(msg)
        if isinstance(self.devices, list):
            object.__setattr__(self, "devices", [int(d) for d in self.devices])

    @classmethod
    def coerce(cls, value: Execution | Mapping[str, Any] | None) -> Execution:
        """An :class:`Execution` from an instance, a dict of its fields or ``None`` (all defaults)."""
        if value is None:
            return cls()
        if isinstance(value, Execution):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                msg = f"Unknown execution options {sorted(unknown)}; see `sgf.Execution`."
                raise TypeError(msg)
            return cls(**value)
        msg = f"execution must be an sgf.Execution, a dict of its fields or None, got {type(value).__name__}."
        raise TypeError(msg)

    def replace(self, **changes) -> Execution:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    # -- resolved values ---------------------------------------------------------------------------------------
    @property
    def resolved_accelerator(self) -> str:
        """The accelerator, with ``"auto"`` and ``"gpu"`` resolved to what this machine has."""
        from .._settings import settings

        accelerator = self.accelerator or settings.accelerator
        if accelerator == "gpu":
            return "cuda"
        if accelerator != "auto":
            return accelerator
        import torch

        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"

    @property
    def distributed(self) -> bool:
        """Whether inference runs over several processes through Lightning rather than in this process."""
        if self.num_nodes > 1 or self.devices == "auto":
            return True
        if isinstance(self.devices, list):
            return len(self.devices) > 1
        return self.devices is not None and int(self.devices) > 1

    @property
    def device(self) -> torch.device:
        """The torch device of a run in this process."""
        import torch

        accelerator = self.resolved_accelerator
        if isinstance(self.devices, list) and len(self.devices) == 1 and accelerator != "cpu":
            return torch.device(accelerator, self.devices[0])
        return torch.device(accelerator)

    @property
    def resolved_precision(self) -> str:
        """``"32"``, ``"bf16"`` or ``"16"`` for this run's accelerator (``"auto"`` resolved)."""
        from .._settings import settings

        precision = self.precision or normalize_precision(settings.precision)
        if precision != "auto":
            return precision
        if self.resolved_accelerator != "cuda":
            return "32"
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "16"

    def token_budget_for(self, device_type: str | None = None, *, training: bool = False) -> int:
        """The token budget: this object's, else ``sgf.settings.token_budget``, else the device type's default."""
        from .._settings import settings

        if self.token_budget is not None:
            return self.token_budget
        if settings.token_budget is not None:
            return settings.token_budget
        device_type = device_type or self.resolved_accelerator
        defaults = TRAINING_TOKEN_BUDGET if training else DEFAULT_TOKEN_BUDGET
        return defaults.get(device_type, defaults["cpu"])

    @property
    def show_progress(self) -> bool:
        """Whether to show progress bars."""
        from .._settings import settings

        return settings.progress_bar if self.progress_bar is None else self.progress_bar

    def autocast(self, device: torch.device):
        """Mixed-precision context of a run in this process (none for 32-bit)."""
        import torch

        precision = self.resolved_precision
        if precision == "32":
            return nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)

    def trainer_kwargs(self) -> dict[str, Any]:
        """Lightning ``Trainer`` arguments: accelerator, devices, strategy, num_nodes and precision."""
        accelerator = self.resolved_accelerator
        return {
            "accelerator": "gpu" if accelerator == "cuda" else accelerator,
            "devices": "auto" if self.devices is None else self.devices,
            "strategy": self.strategy,
            "num_nodes": self.num_nodes,
            "precision": LIGHTNING_PRECISION[self.resolved_precision],
        }
