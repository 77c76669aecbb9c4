"""Package-wide settings: cache folder, download source, verbosity and the defaults of how work runs."""

from __future__ import annotations

import logging
import os
from pathlib import Path

#: Hugging Face repository and the commit every download is pinned to (see ``_registry``).
HF_REPO = "ctheodoris/Geneformer"
HF_REVISION = "05fcbeb8a27d49e0a7a4349152202ee2c1cbfd28"

logger = logging.getLogger("scgeneformer")


class Settings:
    """Settings of :mod:`scgeneformer`, available as ``sgf.settings``.

    Attributes
    ----------
    cache_dir
        Folder where downloaded dictionaries and checkpoints are cached. Defaults to the environment variable
        ``SGF_CACHE_DIR`` or, if unset, the operating system's user cache folder (``~/.cache/scgeneformer`` on Linux).
    hub_url
        Base URL that file paths of the Hugging Face repository are appended to. Defaults to ``SGF_HUB_URL`` or the
        ``resolve`` URL of ``ctheodoris/Geneformer`` at the pinned commit. Point it to a mirror to download from there.
    verbosity
        Level of the ``"scgeneformer"`` logger (a :mod:`logging` level name or number).
    accelerator
        Default device type of :class:`~scgeneformer.Execution`: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``,
        ``"cuda"`` or ``"mps"``.
    precision
        Default precision: ``"auto"`` (bf16 on CUDA where supported, else fp16; fp32 elsewhere), ``"32"``, ``"bf16"``
        or ``"16"``.
    token_budget
        Default padded tokens per batch; ``None`` picks one per device type (8,192 on CPU, 131,072 on CUDA).
    progress_bar
        Whether progress bars are shown by default.

    Examples
    --------
    >>> sgf.settings.progress_bar = False  # doctest: +SKIP
    >>> sgf.settings.token_budget = 32_768  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._cache_dir: Path | None = None
        self._hub_url: str | None = None
        self._accelerator = "auto"
        self._precision = "auto"
        self._token_budget: int | None = None
        self.progress_bar: bool = True

    @property
    def cache_dir(self) -> Path:
        if self._cache_dir is not None:
            return self._cache_dir
        env = os.environ.get("SGF_CACHE_DIR")
        if env:
            return Path(env).expanduser()
        import pooch

        return Path(pooch.os_cache("scgeneformer"))

    @cache_dir.setter
    def cache_dir(self, value: str | os.PathLike | None) -> None:
        self._cache_dir = None if value is None else Path(value).expanduser()

    @property
    def hub_url(self) -> str:
        if self._hub_url is not None:
            return self._hub_url
        return os.environ.get("SGF_HUB_URL") or f"https://huggingface.co/{HF_REPO}/resolve/{HF_REVISION}/"

    @hub_url.setter
    def hub_url(self, value: str | None) -> None:
        self._hub_url = value

    @property
    def verbosity(self) -> int:
        return logger.getEffectiveLevel()

    @verbosity.setter
    def verbosity(self, value: int | str) -> None:
        logger.setLevel(value.upper() if isinstance(value, str) else value)

    @property
    def accelerator(self) -> str:
        return self._accelerator

    @accelerator.setter
    def accelerator(self, value: str) -> None:
        from ._execution import Execution

        Execution(accelerator=value)  # validates
        self._accelerator = value

    @property
    def precision(self) -> str:
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        from ._execution import normalize_precision

        self._precision = normalize_precision(value)

    @property
    def token_budget(self) -> int | None:
        return self._token_budget

    @token_budget.setter
    def token_budget(self, value: int | None) -> None:
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            msg = f"token_budget must be a positive integer or None, got {value!r}."
            raise ValueError(msg)
        self._token_budget = value

    def __repr__(self) -> str:
        return (
            f"Settings(cache_dir={str(self.cache_dir)!r}, hub_url={self.hub_url!r}, verbosity={self.verbosity}, "
            f"accelerator={self.accelerator!r}, precision={self.precision!r}, token_budget={self.token_budget}, "
            f"progress_bar={self.progress_bar})"
        )


settings = Settings()
