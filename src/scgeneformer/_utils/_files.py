"""Safe file handling: every file is written under a temporary name and renamed; nothing loaded executes code.

``atomic_write``/``atomic_path`` give a temporary file beside the target and move it into place with
:func:`os.replace` only once it is complete (and flushed to disk), so a killed process leaves either the old file or
the new one, never a truncated one, and readers never see a half-written file. :func:`safe_unpickle` reads pickles
that hold plain data only (dicts, lists, strings, numbers, numeric numpy scalars) and refuses anything else.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


class UnsafeContentError(ValueError):
    """A file was refused because loading it could run code (it is not plain data)."""


def _temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")


def _fsync_directory(folder: Path) -> None:
    # The rename itself must reach the disk too; directories cannot be opened on every platform.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """Raise unless ``path`` can be written by :func:`atomic_path`; nothing is created.

    ``path`` must not be a folder (or anything but a regular file, if it exists) nor a read-only file, and its
    folder must exist or be creatable (the nearest existing parent is a folder this process may write into).

    Parameters
    ----------
    path
        The file to be written.
    what
        What the file is, for the error messages (``"output"``, ``"--table"``, …).

    Returns
    -------
    ``path`` as a :class:`~pathlib.Path`.

    Examples
    --------
    >>> check_writable("results/embedded.h5ad")  # doctest: +SKIP
    """
    path = Path(path)
    if path.is_dir():
        msg = f"{what} {path} is a folder; give the path of a file to write."
        raise IsADirectoryError(msg)
    if path.exists() and not path.is_file():
        msg = f"{what} {path} exists and is not a regular file; give the path of a file to write."
        raise FileExistsError(msg)
    if path.exists() and not os.access(path, os.W_OK):
        msg = f"{what} {path} is read-only; it is not replaced."
        raise PermissionError(msg)
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        msg = f"{what} {path}: cannot create its folder, {parent} is a file."
        raise NotADirectoryError(msg)
    if not os.access(parent, os.W_OK | os.X_OK):
        msg = f"{what} {path}: no permission to write into {parent}."
        raise PermissionError(msg)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; it replaces ``path`` when the block completes.

    For libraries that write files themselves (``write_h5ad``, safetensors). On an error the temporary file is
    removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_sibling(path)
    try:
        yield temporary
        if temporary.is_file():
            with open(temporary, "rb") as f:
                os.fsync(f.fileno())
        os.replace(temporary, path)
        _fsync_directory(path.parent)
    except BaseException:
        if temporary.is_dir():
            import shutil

            shutil.rmtree(temporary, ignore_errors=True)
        else:
            temporary.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; it replaces ``path`` once closed without error."""
    with atomic_path(path) as temporary, open(temporary, mode, **open_kwargs) as f:
        yield f
        f.flush()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)


def copy_atomic(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy ``source`` to ``target`` under a temporary name, then rename: readers never see a partial copy."""
    import shutil

    with atomic_path(target) as temporary:
        shutil.copyfile(source, temporary)


# -- restricted unpickling ------------------------------------------------------------------------------------------
def _numeric_dtype(*args):
    import numpy as np

    return np.dtype(*args)


def _numeric_scalar(dtype, *args):
    import numpy as np

    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc":
        msg = f"refused: unsafe content (a numpy scalar of dtype {dtype!r} in a pickle of plain data)"
        raise UnsafeContentError(msg)
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar
    return scalar(dtype, *args)


_ALLOWED = {
    ("numpy", "dtype"): _numeric_dtype,
    ("numpy.core.multiarray", "scalar"): _numeric_scalar,
    ("numpy._core.multiarray", "scalar"): _numeric_scalar,
}


class _PlainDataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            msg = f"refused: unsafe content (the pickle refers to {module}.{name}, which plain data never needs)"
            raise UnsafeContentError(msg)
        return allowed


def safe_unpickle(file: IO[bytes]) -> Any:
    """Unpickle plain data (dicts, lists, tuples, strings, numbers, numeric numpy scalars) without running code.

    Raises
    ------
    UnsafeContentError
        The pickle refers to any other class or function ("refused: unsafe content").
    """
    try:
        return _PlainDataUnpickler(file).load()
    except UnsafeContentError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        msg = f"not a readable pickle of plain data ({type(e).__name__}: {e})"
        raise ValueError(msg) from e
