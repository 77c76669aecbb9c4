"""Sphinx configuration of the scgeneformer documentation.

Build from the project root, with the ``doc`` extra installed (``pip install -e ".[doc]"``)::

    python -m sphinx -W -b html docs docs/_build/html

The build must pass with ``-W`` (warnings are errors). Notebooks are rendered with their stored outputs and never
executed (``nb_execution_mode = "off"``); the tutorials are copied from ``tutorials/`` at build time (see
``_copy_tutorials`` below). Links to other projects' documentation (intersphinx) need internet access and are
therefore opt-in: set ``SGF_DOCS_INTERSPHINX=1`` to enable them.
"""

from __future__ import annotations

import os
import shutil
import warnings
from datetime import date
from importlib.metadata import version as _version
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# -- Project information ---------------------------------------------------------------------------------------

project = "scgeneformer"
author = "scgeneformer developers"
copyright = f"{date.today().year}, {author}"
release = _version("scgeneformer")
version = release

# -- General configuration -------------------------------------------------------------------------------------

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx_autodoc_typehints",  # after napoleon, as its documentation asks
    "sphinx_copybutton",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"

# MyST / myst-nb: render notebooks with their stored outputs, never execute them during the build.
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3

# autodoc / autosummary / napoleon (numpy-style docstrings)
autosummary_generate = True
autodoc_member_order = "bysource"
autoclass_content = "class"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_include_init_with_doc = False
napoleon_use_rtype = True
napoleon_use_param = True
typehints_defaults = "braces"
always_use_bars_union = True
# sphinx-autodoc-typehints 3.6 calls an API that Sphinx 9 deprecated; the Python warning (not a Sphinx warning) is
# printed once per docstring. Silence exactly that message.
warnings.filterwarnings("ignore", message=r".*_RstSnippetParser\.set_application.* is deprecated")

# -- Intersphinx -----------------------------------------------------------------------------------------------
# The inventories (objects.inv) are downloaded at build time. Where there is no internet access, each failed
# download is a warning and ``-W`` turns it into an error, so the mapping is only enabled on request
# (SGF_DOCS_INTERSPHINX=1, e.g. on Read the Docs). Without it, references to other projects' objects (e.g.
# :class:`~anndata.AnnData` in docstrings) render as plain, unlinked code; nothing else changes.
_INTERSPHINX = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable", None),
    "scipy": ("https://docs.scipy.org/doc/scipy", None),
    "pandas": ("https://pandas.pydata.org/pandas-docs/stable", None),
    "anndata": ("https://anndata.readthedocs.io/en/stable", None),
    "scanpy": ("https://scanpy.readthedocs.io/en/stable", None),
    "mudata": ("https://mudata.readthedocs.io/en/latest", None),
    "torch": ("https://docs.pytorch.org/docs/stable", None),
}
intersphinx_mapping = _INTERSPHINX if os.environ.get("SGF_DOCS_INTERSPHINX") == "1" else {}

# -- HTML output -----------------------------------------------------------------------------------------------

html_theme = "sphinx_book_theme"
html_title = "scgeneformer"
html_theme_options = {
    "repository_branch": "main",
    "path_to_docs": "docs",
    "use_repository_button": False,
    "show_toc_level": 2,
}
html_static_path: list[str] = []

# -- Tutorials -------------------------------------------------------------------------------------------------
# The notebooks' single source is ``tutorials/`` at the project root, outside the Sphinx source folder. They are
# copied into ``docs/tutorials/`` (git-ignored) when the configuration is read, before Sphinx looks for source
# files; unchanged notebooks are not rewritten, so incremental builds stay incremental.


def _copy_tutorials() -> None:
    source = ROOT / "tutorials"
    target = HERE / "tutorials"
    target.mkdir(exist_ok=True)
    notebooks = {path.name: path for path in sorted(source.glob("*.ipynb"))}
    for stale in target.glob("*.ipynb"):
        if stale.name not in notebooks:
            stale.unlink()
    for name, path in notebooks.items():
        copy = target / name
        if not copy.exists() or copy.read_bytes() != path.read_bytes():
            shutil.copyfile(path, copy)


_copy_tutorials()
