"""Package-wide settings: cache folder, download source, verbosity and the defaults of how work runs."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

#: Hugging Face repository and the commit every download is pinned to (see ``_registry``).
HF_REPO = "ctheodoris/Geneformer"
HF_REVISION = "05fcbeb8a27d49e0a7a4349152202ee2c1cbfd28"

#: scanpy's verbosity levels (0 errors … 4 debug) as logging levels.
_SCANPY_LEVELS = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: 15, 4: logging.DEBUG}


#: Accepted spellings of each precision (ours first, then torch's and Lightning's).
_PRECISIONS = {
    "auto": ("auto",),
    "32": ("32", "fp32", "float32", "32-true"),
    "bf16": ("bf16", "bfloat16", "bf16-mixed"),
    "16": ("16", "fp16", "float16", "16-mixed"),
}
_PRECISION_OF = {spelling: name for name, spellings in _PRECISIONS.items() for spelling in spellings}
LIGHTNING_PRECISION = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}
ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps")


def normalize_precision(precision: str | int) -> str:
    """``"auto"``, ``"32"``, ``"bf16"`` or ``"16"`` for any accepted spelling (e.g. ``"bf16-mixed"``, ``"fp32"``)."""
    name = _PRECISION_OF.get(str(precision).lower())
    if name is None:
        accepted = ", ".join(repr(s) for spellings in _PRECISIONS.values() for s in spellings)
        msg = f"precision must be one of {accepted}; got {precision!r}."
        raise ValueError(msg)
    return name


class _VerbosityFilter(logging.Filter):
    """Lets records through at or above the package's effective verbosity, read when each record is made."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= settings.log_level


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (notebooks and test runners replace it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


logger = logging.getLogger("scgeneformer")
logger.setLevel(logging.DEBUG)  # the filter decides, so that following scanpy's verbosity takes effect at once
logger.addFilter(_VerbosityFilter())
_handler = _StderrHandler()  # stderr, like scanpy's messages
_handler.setFormatter(logging.Formatter("%(message)s"))
logger.addHandler(_handler)
logger.propagate = False  # one message per record; set it to True to route records to your own handlers


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
    local_files
        A folder holding copies of the published dictionaries and checkpoints (any layout, e.g. a clone of the
        Hugging Face repository or files copied from another machine). Each file is looked up there, checked by size
        and sha256, and copied into the cache instead of being downloaded. Defaults to ``SGF_LOCAL_FILES``.
    verbosity
        How much the package reports: a scanpy verbosity (0 errors, 1 warnings, 2 info, 3 hints, 4 debug) or a
        :mod:`logging` level name. ``None`` (default) follows ``scanpy.settings.verbosity`` when scanpy is imported,
        else warnings. Messages go to stderr through the ``"scgeneformer"`` logger.
    accelerator
        Default device type of :class:`~scgeneformer.Execution`: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``,
        ``"cuda"`` or ``"mps"``.
    precision
        Default precision: ``"auto"`` (bf16 on CUDA where supported, else fp16; fp32 elsewhere), ``"32"``, ``"bf16"``
        or ``"16"``.
    token_budget
        Default padded tokens per batch; ``None`` picks one per device type (8,192 on CPU, 131,072 on CUDA).
    progress_bar
        Whether progress bars (ours and Lightning's) are shown by default. ``None`` (default): shown unless the
        verbosity is 0 (errors only), so ``sc.settings.verbosity = 0`` silences them too.

    Examples
    --------
    >>> sgf.settings.verbosity = "info"  # report what each step does
    >>> sgf.settings.progress_bar = False  # but no progress bars
    >>> sgf.settings.token_budget = 32_768  # doctest: +SKIP
    >>> sgf.settings.verbosity = sgf.settings.progress_bar = None  # back to following scanpy
    """

    def __init__(self) -> None:
        self._cache_dir: Path | None = None
        self._hub_url: str | None = None
        self._accelerator = "auto"
        self._precision = "auto"
        self._token_budget: int | None = None
        self._verbosity: int | None = None
        self._progress_bar: bool | None = None
        self._local_files: Path | None = None

    @property
    def cache_dir(self) -> Path:
        if self._cache_dir is not None:
            return self._cache_dir
        env = os.environ.get("SGF_CACHE_DIR")
        if env:
            return Path(env).expanduser()
        from ._utils._optional import import_pooch

        return Path(import_pooch().os_cache("scgeneformer"))

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
    def local_files(self) -> Path | None:
        if self._local_files is not None:
            return self._local_files
        env = os.environ.get("SGF_LOCAL_FILES")
        return Path(env).expanduser() if env else None

    @local_files.setter
    def local_files(self, value: str | os.PathLike | None) -> None:
        if value is not None and not Path(value).expanduser().is_dir():
            msg = f"local_files must be an existing folder, got {value!r}."
            raise FileNotFoundError(msg)
        self._local_files = None if value is None else Path(value).expanduser()

    @property
    def verbosity(self) -> int | None:
        return self._verbosity

    @verbosity.setter
    def verbosity(self, value: int | str | None) -> None:
        if value is None:
            self._verbosity = None
        elif isinstance(value, bool):
            msg = f"verbosity must be 0-4, a logging level name or None, got {value!r}."
            raise TypeError(msg)
        elif isinstance(value, int) and value in _SCANPY_LEVELS:
            self._verbosity = _SCANPY_LEVELS[value]
        elif isinstance(value, int):
            self._verbosity = value
        else:
            level = logging.getLevelName(str(value).upper())
            if not isinstance(level, int):
                msg = f"verbosity must be 0-4, a logging level name or None, got {value!r}."
                raise ValueError(msg)
            self._verbosity = level

    @property
    def log_level(self) -> int:
        """The effective logging level: ``verbosity``, else scanpy's, else warnings."""
        if self._verbosity is not None:
            return self._verbosity
        scanpy = sys.modules.get("scanpy")
        if scanpy is not None:
            try:
                return _SCANPY_LEVELS.get(int(scanpy.settings.verbosity), logging.WARNING)
            except (AttributeError, TypeError, ValueError):
                pass
        return logging.WARNING

    @property
    def progress_bar(self) -> bool:
        if self._progress_bar is not None:
            return self._progress_bar
        return self.log_level < logging.ERROR

    @progress_bar.setter
    def progress_bar(self, value: bool | None) -> None:
        self._progress_bar = None if value is None else bool(value)

    @property
    def accelerator(self) -> str:
        return self._accelerator

    @accelerator.setter
    def accelerator(self, value: str) -> None:
        if value not in ACCELERATORS:
            msg = f"accelerator must be one of {ACCELERATORS}, got {value!r}."
            raise ValueError(msg)
        self._accelerator = value

    @property
    def precision(self) -> str:
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
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
            f"Settings(cache_dir={str(self.cache_dir)!r}, hub_url={self.hub_url!r}, log_level={self.log_level}, "
            f"accelerator={self.accelerator!r}, precision={self.precision!r}, token_budget={self.token_budget}, "
            f"progress_bar={self.progress_bar})"
        )


settings = Settings()
