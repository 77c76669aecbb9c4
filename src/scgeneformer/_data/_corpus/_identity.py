"""What identifies a corpus file on disk, checked whenever a corpus (re)opens it.

:func:`~scgeneformer.read_corpus` reads the cells' lengths and annotations once and keeps the files closed until the
tokens are needed; a data-loader worker opens its own handles. If a file was replaced in between (re-encoded with
another vocabulary, rewritten with other cells), the corpus would read tokens that no longer belong to the cells it
lists. Each file's :class:`FileStamp` (size and modification time in nanoseconds) is therefore recorded when the
corpus is opened and compared whenever the file is opened again; the corpus kinds also compare what they can read
cheaply (encoding version, special tokens, lengths) and raise :class:`CorpusChangedError` on any difference.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple


class CorpusChangedError(RuntimeError):
    """A corpus file changed on disk after :func:`~scgeneformer.read_corpus` opened it."""


class FileStamp(NamedTuple):
    """Size (bytes) and latest modification time (ns) of a file, or of a store folder's top two levels."""

    size: int
    mtime_ns: int


#: Levels of a folder (a ``.zarr`` store) stamped: the store, its groups (obs, var, layers …) and their members.
FOLDER_DEPTH = 2


def file_stamp(path: Path) -> FileStamp:
    """The :class:`FileStamp` of ``path``.

    A file's size and mtime; for a folder, the summed sizes and latest mtime of its entries down to
    :data:`FOLDER_DEPTH` levels (rewriting a store, or any of its groups, changes them).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    """
    status = os.stat(path)
    if not Path(path).is_dir():
        return FileStamp(status.st_size, status.st_mtime_ns)
    size, mtime = 0, status.st_mtime_ns
    folders = [(Path(path), 0)]
    while folders:
        folder, depth = folders.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                entry_status = entry.stat(follow_symlinks=False)
                size += entry_status.st_size
                mtime = max(mtime, entry_status.st_mtime_ns)
                if depth + 1 < FOLDER_DEPTH and entry.is_dir(follow_symlinks=False):
                    folders.append((Path(entry.path), depth + 1))
    return FileStamp(size, mtime)


def changed(path: Path, what: str) -> CorpusChangedError:
    """The error for ``path``, changed on disk in ``what`` since the corpus was opened."""
    msg = (
        f"{path} changed on disk after `sgf.read_corpus` opened it ({what}); the corpus would read tokens that no "
        "longer belong to the cells it lists. Call `sgf.read_corpus` again."
    )
    return CorpusChangedError(msg)


def check_stamp(path: Path, recorded: FileStamp) -> None:
    """Raise :class:`CorpusChangedError` unless ``path`` still has the size and mtime recorded when it was opened."""
    try:
        now = file_stamp(path)
    except FileNotFoundError:
        raise changed(path, "it no longer exists") from None
    if now != recorded:
        details = []
        if now.size != recorded.size:
            details.append(f"size {recorded.size} -> {now.size} bytes")
        if now.mtime_ns != recorded.mtime_ns:
            details.append(f"mtime_ns {recorded.mtime_ns} -> {now.mtime_ns}")
        raise changed(path, ", ".join(details))
