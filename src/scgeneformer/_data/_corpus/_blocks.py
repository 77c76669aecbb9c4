"""The block cache of a corpus: the last blocks of contiguous cells read from disk, private to each process."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

#: Contiguous cells read from disk at once.
BLOCK_CELLS = 1024
#: Blocks kept in memory by each process (and each data-loader worker).
CACHE_BLOCKS = 16

Block = tuple[np.ndarray, np.ndarray]


class BlockCache:
    """The last :data:`CACHE_BLOCKS` blocks read, as ``(flat int32 tokens, offsets)``, least recently used dropped.

    The cache belongs to the process that filled it: a forked data-loader worker starts empty (see
    :meth:`moved_process`), and a pickled cache (spawned workers) arrives empty.
    """

    def __init__(self, capacity: int = CACHE_BLOCKS) -> None:
        self.capacity = capacity
        self._blocks: OrderedDict[int, Block] = OrderedDict()
        self._pid = os.getpid()

    def moved_process(self) -> bool:
        """Whether this process is not the one that filled the cache; if so the cache is emptied and now its own.

        The owner of the cache then drops its file handles too: HDF5 and Arrow handles must not be shared with forked
        data-loader workers, each process opens its own.
        """
        if self._pid == os.getpid():
            return False
        self._blocks = OrderedDict()
        self._pid = os.getpid()
        return True

    def get(self, block: int, read: Callable[[int], Block]) -> Block:
        """Block ``block``, from the cache or from ``read(block)`` (then cached)."""
        cached = self._blocks.get(block)
        if cached is not None:
            self._blocks.move_to_end(block)
            return cached
        cached = self._blocks[block] = read(block)
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)
        return cached

    def __getstate__(self) -> dict:
        # A pickled cache arrives empty, owned by no process yet: the receiving process fills its own.
        return {"capacity": self.capacity, "_blocks": OrderedDict(), "_pid": -1}
