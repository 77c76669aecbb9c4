"""Package-wide settings: cache folder, download source and verbosity."""

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
    """

    def __init__(self) -> None:
        self._cache_dir: Path | None = None
        self._hub_url: str | None = None

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

    def __repr__(self) -> str:
        return f"Settings(cache_dir={str(self.cache_dir)!r}, hub_url={self.hub_url!r}, verbosity={self.verbosity})"


settings = Settings()
