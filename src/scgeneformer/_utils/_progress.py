"""Progress bars."""

from __future__ import annotations


def progress_bar(**kwargs):
    """A tqdm progress bar on stderr: a notebook widget where ipywidgets is installed, text otherwise.

    ``tqdm.auto`` warns in notebooks without ipywidgets; the text bar works everywhere.
    """
    try:
        import ipywidgets  # noqa: F401
        from tqdm.auto import tqdm
    except ImportError:
        from tqdm import tqdm
    return tqdm(**kwargs)
