"""Fixtures; the helpers they use live in ``helpers.py`` so tests can import them too."""

import pytest
from helpers import adata, isolated_settings, vocab, vocab_v2  # noqa: F401


@pytest.fixture(autouse=True)
def _quiet_progress_bars():
    """No progress bars in test output (``sgf.settings.progress_bar``), restored afterwards."""
    import scgeneformer as sgf

    before = sgf.settings._progress_bar
    sgf.settings.progress_bar = False
    yield
    sgf.settings.progress_bar = before


@pytest.fixture(autouse=True)
def _close_figures():
    """Close the figures a test's plots left open (``show=False`` returns their axes and keeps them)."""
    yield
    import sys

    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")
