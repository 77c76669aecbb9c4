"""scgeneformer: Geneformer for scverse.

Use it as ``import scgeneformer as sgf``; the submodules ``pp``, ``tl`` and ``pl`` follow scanpy's layering.
Heavy dependencies (anndata, torch, scvi-tools) are imported on first use, so importing the package is fast;
:class:`InferenceModel` runs every tool without scvi-tools and Lightning, which only training needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._settings import settings
from ._utils._lazy import lazy_exports
from ._version import __version__ as __version__

if TYPE_CHECKING:
    from . import datasets, model, pl, pp, tl
    from ._compute._execution import Execution
    from ._data._corpus import Corpus, read_corpus
    from ._data._encoding import EncodingInfo
    from ._hub._download import DownloadError, seed_cache
    from .model import GeneformerModel, InferenceModel, list_models
    from .vocabulary import Vocabulary, get_vocabulary

__all__ = [
    "Corpus",
    "DownloadError",
    "EncodingInfo",
    "Execution",
    "GeneformerModel",
    "InferenceModel",
    "Vocabulary",
    "datasets",
    "get_vocabulary",
    "list_models",
    "model",
    "pl",
    "pp",
    "read_corpus",
    "seed_cache",
    "settings",
    "tl",
]

_LAZY = {
    "pp": ".pp",
    "datasets": ".datasets",
    "model": ".model",
    "tl": ".tl",
    "pl": ".pl",
    "DownloadError": "._hub._download",
    "seed_cache": "._hub._download",
    "EncodingInfo": "._data._encoding",
    "Corpus": "._data._corpus",
    "read_corpus": "._data._corpus",
    "Execution": "._compute._execution",
    "GeneformerModel": ".model",
    "InferenceModel": ".model",
    "list_models": "._hub._checkpoints",
    "Vocabulary": ".vocabulary",
    "get_vocabulary": ".vocabulary",
}
__getattr__, __dir__ = lazy_exports(globals(), _LAZY)
