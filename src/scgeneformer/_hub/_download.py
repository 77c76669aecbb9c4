"""Downloads: published Geneformer files (pooch, sha256-checked) and Hugging Face repository snapshots.

Published files are fetched through :mod:`pooch` into the cache, from a local copy when there is one. Their paths
are relative to the root of the Hugging Face repository ``ctheodoris/Geneformer`` at the commit pinned in
:mod:`scgeneformer._settings`; sizes and sha256 are those of the upstream files (Git LFS object ids). Files published
elsewhere (the ortholog table) take the same path with their own address (``fetch(file, url=...)``). Other Hugging
Face model repositories are downloaded whole through ``huggingface_hub`` (:func:`hub_snapshot`).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from .._settings import logger, settings
from .._utils._optional import import_pooch
from ._registry import DICTIONARY_FILES, RemoteFile


@contextlib.contextmanager
def pooch_at_our_verbosity():
    """Pooch logs every download and cache look-up at INFO, with local paths; show that only at ``verbosity="info"``."""
    pooch = import_pooch()

    pooch_logger = pooch.get_logger()
    level = pooch_logger.level
    if settings.log_level > logging.INFO:
        pooch_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        pooch_logger.setLevel(level)


class DownloadError(RuntimeError):
    """A published file could not be downloaded or failed its integrity check."""


def fetch(file: RemoteFile, *, base_url: str | None = None, url: str | None = None, progressbar: bool = False) -> Path:
    """Return the local path of ``file``, from the cache, from ``sgf.settings.local_files`` or downloaded.

    ``file.path`` is where the file lies in the cache and below ``base_url`` (default ``sgf.settings.hub_url``); a
    file published elsewhere is downloaded from its full address ``url`` instead. A copy under
    ``sgf.settings.local_files`` with the right size and sha256 is copied into the cache instead of downloading.
    Downloads go to a temporary file that only replaces the cached copy once its sha256 matches, so an
    interrupted or corrupted download never leaves a broken file in the cache.
    """
    pooch = import_pooch()

    target = Path(settings.cache_dir) / file.path
    if not (target.is_file() and target.stat().st_size == file.size) and settings.local_files is not None:
        _seed_from(Path(settings.local_files), [file])

    cache = pooch.create(
        path=settings.cache_dir,
        base_url=base_url or settings.hub_url,
        registry={file.path: f"sha256:{file.sha256}"},
        urls=None if url is None else {file.path: url},
        retry_if_failed=1,
    )
    address = cache.get_url(file.path)
    logger.debug("fetching %s from %s into %s", file.path, address, settings.cache_dir)
    # A timeout so that a firewalled or offline machine fails fast instead of hanging.
    if progressbar and settings.progress_bar:
        from .._utils._progress import progress_bar

        progressbar = progress_bar(total=file.size, unit="B", unit_scale=True, desc=Path(file.path).name)
    else:
        progressbar = False
    downloader = pooch.HTTPDownloader(progressbar=progressbar, timeout=(15, 300))
    try:
        with pooch_at_our_verbosity():
            return Path(cache.fetch(file.path, downloader=downloader))
    except ValueError as e:  # pooch raises ValueError on a hash mismatch
        check = f"Check `sgf.settings.hub_url` ({settings.hub_url!r})" if url is None else "Check the address"
        msg = (
            f"The file downloaded from {address} does not have the expected sha256 {file.sha256}; it was discarded "
            f"and nothing was cached. {check} or try again later."
        )
        raise DownloadError(msg) from e
    except Exception as e:
        where = settings.local_files
        msg = (
            f"Could not download {address} ({type(e).__name__}: {e}). Offline? Point `sgf.settings.local_files` (or "
            f"the environment variable SGF_LOCAL_FILES) at a folder holding a copy of {Path(file.path).name} (any "
            f"layout; checked by sha256"
            + (f"; none was found in {where}" if where is not None else "")
            + f"), or place it at {Path(settings.cache_dir) / file.path}."
        )
        raise DownloadError(msg) from e


def hub_snapshot(repo_id: str, revision: str | None = None) -> Path:
    """A local copy of a Hugging Face model repository, downloaded into ``sgf.settings.cache_dir / "hub"``.

    Without network access the copy already in that cache is used; a clear error says when there is none.
    """
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # transformers depends on it, but keep the message clear
        msg = "Loading from the Hugging Face hub needs huggingface_hub: pip install huggingface_hub"
        raise ImportError(msg) from e
    cache = Path(settings.cache_dir) / "hub"
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache))
    except Exception as online_error:  # noqa: BLE001 - offline, unknown repository, ...
        try:
            return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True))
        except Exception:  # noqa: BLE001 - report the download error, which says why
            reason = f"{type(online_error).__name__}: {online_error}"
            msg = f"Could not get the Hugging Face repository {repo_id!r} ({reason})."
            raise FileNotFoundError(msg) from online_error


def seed_cache(folder: str | Path, files: list[RemoteFile] | None = None) -> list[Path]:
    """Copy published files found anywhere below ``folder`` into the cache, if their size and sha256 match.

    This makes :class:`~scgeneformer.Vocabulary` and checkpoints available offline, e.g. from a copy of the files
    made on another machine. Files whose content differs from the published one are ignored (with a warning).
    ``files`` defaults to every published dictionary. Usually setting ``sgf.settings.local_files`` is simpler: each
    file is then looked up there when it is first needed.

    Returns
    -------
    The cache paths that were seeded.

    Examples
    --------
    >>> sgf.seed_cache("/mnt/usb/geneformer-files")  # doctest: +SKIP
    """
    if files is None:
        files = [f for version in DICTIONARY_FILES.values() for f in version.values()]
    return _seed_from(Path(folder), files)


def _local_index(folder: Path) -> dict[str, list[Path]]:
    """File name → paths of the files below ``folder`` (cached per folder and modification time)."""
    key = (str(folder.resolve()), folder.stat().st_mtime if folder.exists() else 0.0)
    if key not in _INDEXES:
        index: dict[str, list[Path]] = {}
        for candidate in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if candidate.is_file():
                index.setdefault(candidate.name, []).append(candidate)
        _INDEXES.clear()
        _INDEXES[key] = index
    return _INDEXES[key]


_INDEXES: dict = {}


def _seed_from(folder: Path, files: list[RemoteFile]) -> list[Path]:
    import hashlib

    from .._utils._files import copy_atomic

    seeded = []
    index = _local_index(folder)
    for remote in files:
        target = Path(settings.cache_dir) / remote.path
        if target.is_file() and target.stat().st_size == remote.size:
            continue
        candidates = [folder / remote.path] + index.get(Path(remote.path).name, [])
        for candidate in candidates:
            if not candidate.is_file() or candidate.stat().st_size != remote.size:
                continue
            digest = hashlib.sha256()
            with open(candidate, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            if digest.hexdigest() != remote.sha256:
                logger.warning("%s differs from the published %s; not used.", candidate, remote.path)
                continue
            # Copied under a temporary name and renamed: another process reading the cache never sees half a file.
            copy_atomic(candidate, target)
            seeded.append(target)
            logger.info("using the local copy %s of %s", candidate, remote.path)
            break
    return seeded
