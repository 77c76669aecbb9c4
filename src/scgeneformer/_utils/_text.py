"""Counts in messages: "1 cell", "2 cells"."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, in the plural (``plural``, default ``noun + "s"``) unless ``n`` is 1.

    Examples
    --------
    >>> counted(1, "cell"), counted(3, "gene"), counted(0, "class", "classes")
    ('1 cell', '3 genes', '0 classes')
    """
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
