"""scgeneformer: Geneformer for scverse.

Use it as ``import scgeneformer as sgf``; the submodules ``pp``, ``tl`` and ``pl`` follow scanpy's layering.
Heavy dependencies (anndata, torch, scvi-tools) are imported on first use, so importing the package is fast;
:class:`InferenceModel` runs every tool without scvi-tools and Lightning, which only training needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._settings import settings
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
    "pp": (".pp", None),
    "datasets": (".datasets", None),
    "model": (".model", None),
    "tl": (".tl", None),
    "pl": (".pl", None),
    "DownloadError": ("._hub._download", "DownloadError"),
    "seed_cache": ("._hub._download", "seed_cache"),
    "EncodingInfo": ("._data._encoding", "EncodingInfo"),
    "Corpus": ("._data._corpus", "Corpus"),
    "read_corpus": ("._data._corpus", "read_corpus"),
    "Execution": ("._compute._execution", "Execution"),
    "GeneformerModel": (".model", "GeneformerModel"),
    "InferenceModel": (".model", "InferenceModel"),
    "list_models": ("._hub._checkpoints", "list_models"),
    "Vocabulary": (".vocabulary", "Vocabulary"),
    "get_vocabulary": (".vocabulary", "get_vocabulary"),
}


def __getattr__(name: str):
    if name not in _LAZY:
        msg = f"module 'scgeneformer' has no attribute {name!r}"
        raise AttributeError(msg)
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name, __name__)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
