"""Advisory locks on folders, released by the operating system when the process holding them ends.

:func:`folder_lock` takes ``flock`` on the folder itself (an open descriptor of the directory), so no lock file is
left behind and a killed process never leaves a stale lock. Writers take it exclusively, readers shared: a reader
waits for a writer to finish and never sees a folder half-way between two states. Where the file system or platform
has no ``flock`` (Windows, some network file systems), the block runs unlocked and says so in the log; callers keep
their own checks for that case.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger("scgeneformer")


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, *, shared: bool = False) -> Iterator[bool]:
    """Hold a lock on ``folder`` (which must exist) for the block; yields whether the lock is held.

    Parameters
    ----------
    folder
        The folder to lock.
    shared
        Take a shared (reader's) lock instead of an exclusive (writer's) one.

    Yields
    ------
    bool
        ``True`` when the lock is held; ``False`` where the platform or file system cannot lock folders.
    """
    folder = Path(folder)
    try:
        import fcntl
    except ImportError:  # Windows
        fcntl = None
    descriptor = None
    if fcntl is not None:
        with contextlib.suppress(OSError):
            descriptor = os.open(folder, os.O_RDONLY)
    try:
        locked = False
        if descriptor is not None:
            mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
            try:
                fcntl.flock(descriptor, mode | fcntl.LOCK_NB)
                locked = True
            except BlockingIOError:
                logger.info("Waiting for another process using %s to finish.", folder)
                fcntl.flock(descriptor, mode)
                locked = True
            except OSError as e:  # e.g. a network file system without flock
                logger.warning("%s cannot be locked (%s); going on without a lock.", folder, e)
        yield locked
    finally:
        if descriptor is not None:
            os.close(descriptor)  # releases the lock
