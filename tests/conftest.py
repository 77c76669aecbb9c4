"""Fixtures; the helpers they use live in ``helpers.py`` so tests can import them too."""

from helpers import adata, isolated_settings, vocab, vocab_v2  # noqa: F401
