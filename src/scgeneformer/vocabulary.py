"""Gene vocabularies of the Geneformer model families (token ids, gene medians, identifier mappings)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from ._hub._download import fetch
from ._hub._registry import DICTIONARY_FILES
from ._utils._files import UnsafeContentError, safe_unpickle

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd

#: Model input size and corpus of each vocabulary version.
VERSIONS = {
    "V1": {"input_size": 2048, "corpus": "gc30M", "aliases": ("gc30M",)},
    "V2": {"input_size": 4096, "corpus": "gc104M", "aliases": ("gc104M", "gc95M")},
}
_ROLES = ("token_dictionary", "gene_median_dictionary", "gene_name_id_dict", "ensembl_mapping_dict")
# Strings that stand for a missing identifier, typically produced by ``astype(str)`` on missing values.
_MISSING_ID_STRINGS = frozenset({"", "NAN", "NONE", "NA", "<NA>", "NULL"})
_VERSION_SUFFIX = re.compile(r"^(ENS[A-Z]*G\d+)\.\d+$")


@dataclass(frozen=True, eq=False)
class Vocabulary:
    """The gene vocabulary of one Geneformer version.

    It bundles the four upstream dictionaries: tokens (Ensembl ID → token id), the corpus-wide non-zero median of
    each gene, gene symbol → Ensembl ID, and the Ensembl mapping (upper-cased IDs, symbols and aliases → canonical
    Ensembl ID). Create one with :meth:`load` (``"V1"``/``"V2"``, downloaded and cached) or :meth:`from_folder`.

    Attributes
    ----------
    version
        ``"V1"`` (Genecorpus-30M, 25,426 tokens, input size 2048, no special tokens) or ``"V2"`` (Genecorpus-104M,
        20,275 tokens, input size 4096, each cell wrapped in ``<cls>`` … ``<eos>``).
    token_dictionary, gene_medians, gene_name_id, ensembl_mapping
        The upstream dictionaries as loaded.
    source
        Where the files came from.

    Examples
    --------
    >>> vocab = sgf.Vocabulary.load("V1")  # doctest: +SKIP
    >>> vocab.map_gene_ids(["ENSG00000170458", "CD14", "cd14.2"])  # doctest: +SKIP
    """

    version: Literal["V1", "V2"]
    token_dictionary: dict[str, int] = field(repr=False)
    gene_medians: dict[str, float] = field(repr=False)
    gene_name_id: dict[str, str] = field(repr=False)
    ensembl_mapping: dict[str, str] = field(repr=False)
    source: str = ""

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, version: Literal["V1", "V2"] = "V2") -> Vocabulary:
        """Load the published dictionaries of ``version``, downloading them into ``sgf.settings.cache_dir`` once."""
        version = _check_version(version)
        paths = {role: fetch(remote) for role, remote in DICTIONARY_FILES[version].items()}
        return cls._from_paths(paths, version=version, source=f"published {version} dictionaries")

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> Vocabulary:
        """Load a vocabulary from a folder holding one version's four dictionary pickles under their upstream names.

        For example ``token_dictionary_gc104M.pkl``, ``gene_median_dictionary_gc104M.pkl``,
        ``gene_name_id_dict_gc104M.pkl`` and ``ensembl_mapping_dict_gc104M.pkl`` for V2 (``gc95M`` names are the
        same files), or the ``_gc30M`` files for V1.
        """
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            msg = f"Vocabulary folder {folder} does not exist."
            raise FileNotFoundError(msg)
        for version, info in VERSIONS.items():
            for corpus in info["aliases"]:
                paths = {role: folder / f"{role}_{corpus}.pkl" for role in _ROLES}
                if all(p.is_file() for p in paths.values()):
                    return cls._from_paths(paths, version=version, source=str(folder))
        expected = ", ".join(f"{role}_<gc30M|gc104M>.pkl" for role in _ROLES)
        msg = f"{folder} does not hold the four dictionary files of one Geneformer version ({expected})."
        raise FileNotFoundError(msg)

    @classmethod
    def _from_paths(cls, paths: dict[str, Path], *, version: str, source: str) -> Vocabulary:
        loaded = {}
        for role, path in paths.items():
            with open(path, "rb") as f:
                head = f.read(64)
                if head.startswith(b"version https://git-lfs"):
                    msg = f"{path} is a Git LFS pointer, not the dictionary itself; fetch the real file."
                    raise ValueError(msg)
                f.seek(0)
                try:
                    loaded[role] = safe_unpickle(f)
                except UnsafeContentError as e:
                    msg = f"{path}: {e}. Dictionary files hold plain dicts; this one is not loaded."
                    raise UnsafeContentError(msg) from e
                except ValueError as e:
                    msg = f"{path} is not a readable dictionary file ({e})."
                    raise ValueError(msg) from e
                if not isinstance(loaded[role], dict):
                    msg = f"{path} does not hold a dictionary (found {type(loaded[role]).__name__})."
                    raise ValueError(msg)
        tokens = {str(k): int(v) for k, v in loaded["token_dictionary"].items()}
        has_cls = "<cls>" in tokens and "<eos>" in tokens
        if has_cls != (version == "V2"):
            msg = f"The token dictionary in {source} does not match version {version} (special tokens {has_cls})."
            raise ValueError(msg)
        return cls(
            version=version,
            token_dictionary=tokens,
            gene_medians={str(k): float(v) for k, v in loaded["gene_median_dictionary"].items()},
            gene_name_id=dict(loaded["gene_name_id_dict"]),
            ensembl_mapping=dict(loaded["ensembl_mapping_dict"]),
            source=source,
        )

    # -- model-facing properties --------------------------------------------------------------------------------
    @property
    def input_size(self) -> int:
        """Maximum sequence length of the models of this version, special tokens included."""
        return VERSIONS[self.version]["input_size"]

    @property
    def has_special_tokens(self) -> bool:
        """Whether cells are wrapped in ``<cls>`` … ``<eos>`` (V2)."""
        return self.version == "V2"

    @property
    def n_special(self) -> int:
        """Number of special tokens added to each cell (2 for V2, 0 for V1)."""
        return 2 if self.has_special_tokens else 0

    @property
    def max_genes(self) -> int:
        """Maximum number of gene tokens per cell."""
        return self.input_size - self.n_special

    @property
    def pad_id(self) -> int:
        """Token id of ``<pad>``."""
        return self.token_dictionary["<pad>"]

    @property
    def mask_id(self) -> int:
        """Token id of ``<mask>``."""
        return self.token_dictionary["<mask>"]

    @property
    def cls_id(self) -> int | None:
        """Token id of ``<cls>`` (``None`` in V1)."""
        return self.token_dictionary.get("<cls>")

    @property
    def eos_id(self) -> int | None:
        """Token id of ``<eos>`` (``None`` in V1)."""
        return self.token_dictionary.get("<eos>")

    @property
    def special_ids(self) -> tuple[int, ...]:
        """Ids of all special tokens (pad, mask and, in V2, cls and eos)."""
        return tuple(v for k, v in self.token_dictionary.items() if k.startswith("<"))

    def __len__(self) -> int:
        return len(self.token_dictionary)

    @cached_property
    def id_to_gene(self) -> np.ndarray:
        """Ensembl ID (or special token name) of each token id."""
        out = np.empty(len(self), dtype=object)
        for gene, token in self.token_dictionary.items():
            out[token] = gene
        return out

    @cached_property
    def token_medians(self) -> np.ndarray:
        """Gene median of each token id (float64, NaN for special tokens)."""
        out = np.full(len(self), np.nan)
        for gene, token in self.token_dictionary.items():
            if not gene.startswith("<"):
                out[token] = self.gene_medians[gene]
        return out

    @cached_property
    def id_to_symbol(self) -> np.ndarray:
        """Gene symbol of each token id (the Ensembl ID where no symbol is known)."""
        symbols = self.id_to_gene.copy()
        for symbol, gene in self.gene_name_id.items():
            token = self.token_dictionary.get(gene)
            if token is not None and symbols[token] == gene:
                symbols[token] = symbol
        return symbols

    # -- identifier mapping ------------------------------------------------------------------------------------
    @cached_property
    def _mapping_in_vocabulary(self) -> dict[str, str]:
        # The reference keeps only mapping entries whose target is a token.
        return {k: v for k, v in self.ensembl_mapping.items() if v in self.token_dictionary}

    @cached_property
    def _lookup(self) -> dict[str, int]:
        """Upper-cased Ensembl ID, symbol or alias → token id."""
        lookup = {k.upper(): self.token_dictionary[v] for k, v in self._mapping_in_vocabulary.items()}
        for symbol, gene in self.gene_name_id.items():
            token = self.token_dictionary.get(self._mapping_in_vocabulary.get(gene, gene))
            if token is not None:
                lookup.setdefault(str(symbol).upper(), token)
        for gene, token in self.token_dictionary.items():
            if not gene.startswith("<"):
                lookup.setdefault(gene.upper(), token)
        return lookup

    def map_gene_ids(self, gene_ids: Sequence | pd.Index | np.ndarray) -> np.ndarray:
        """Token id of each gene identifier, ``-1`` where it is not in the vocabulary.

        Identifiers may be Ensembl IDs with or without a version suffix, in any case, or gene symbols and aliases.
        Missing values and the strings ``""``, ``"nan"``, ``"None"``, ``"NA"`` are treated as unknown genes.
        """
        import pandas as pd

        ids = pd.Series(np.asarray(gene_ids, dtype=object))
        keys = ids.where(ids.notna(), None).map(normalize_gene_id, na_action="ignore")
        return keys.map(self._lookup).fillna(-1).to_numpy(dtype=np.int32)

    def map_gene_ids_reference(self, gene_ids: Sequence | pd.Index | np.ndarray) -> tuple[np.ndarray, bool]:
        """Map identifiers exactly as the reference tokenizer does.

        Returns the token id of each identifier (``-1`` if unmapped) and whether the reference would sum
        duplicated genes. The reference upper-cases IDs and maps them through the Ensembl mapping only (no version
        suffix removal, no symbol dictionary, ``"nan"`` is a gene), and decides to sum duplicates by comparing the
        number of distinct *raw* IDs that are mapping keys with the number of distinct targets.
        """
        import pandas as pd

        mapping = self._mapping_in_vocabulary
        ids = pd.Series(np.asarray(gene_ids, dtype=object))
        canonical = ids.map(lambda s: mapping.get(s.upper()) if isinstance(s, str) else None)
        tokens = canonical.map(self.token_dictionary).fillna(-1).to_numpy(dtype=np.int32)
        raw_keys = [s for s in ids if isinstance(s, str) and s in mapping]
        collapse = len(set(raw_keys)) != len({mapping[s] for s in raw_keys})
        return tokens, collapse

    def __repr__(self) -> str:
        return f"Vocabulary({self.version!r}, {len(self)} tokens, input size {self.input_size}, source={self.source!r})"


def normalize_gene_id(value: object) -> str | None:
    """The lookup key of a gene identifier: stripped, upper-cased, without an Ensembl version suffix.

    Missing-value strings (``""``, ``"nan"``, ``"None"``, ``"NA"``, ``"<NA>"``, ``"NULL"``) give ``None``.
    """
    key = str(value).strip().upper()
    if key in _MISSING_ID_STRINGS:
        return None
    match = _VERSION_SUFFIX.match(key)
    return match.group(1) if match else key


def _check_version(version: str) -> str:
    if version not in VERSIONS:
        msg = f"Unknown vocabulary version {version!r}; use 'V1' (Genecorpus-30M) or 'V2' (Genecorpus-104M)."
        raise ValueError(msg)
    return version


@lru_cache(maxsize=8)
def _load_folder(folder: str) -> Vocabulary:
    return Vocabulary.from_folder(folder)


def get_vocabulary(vocabulary: Vocabulary | str | os.PathLike) -> Vocabulary:
    """Resolve ``"V1"``, ``"V2"``, a :class:`Vocabulary` or a dictionary folder to a :class:`Vocabulary`.

    Loaded vocabularies are cached for the session.

    Examples
    --------
    >>> sgf.get_vocabulary("V2").input_size  # doctest: +SKIP
    4096
    """
    if isinstance(vocabulary, Vocabulary):
        return vocabulary
    if isinstance(vocabulary, str) and vocabulary in VERSIONS:
        from ._settings import settings

        # The cache key includes the download settings so that changing them takes effect.
        return _load_by_settings(vocabulary, str(settings.cache_dir), settings.hub_url)
    if isinstance(vocabulary, str | os.PathLike):
        path = Path(vocabulary).expanduser()
        if path.is_dir():
            return _load_folder(str(path.resolve()))
        msg = f"vocabulary must be 'V1', 'V2', a Vocabulary or a folder of dictionary files, got {vocabulary!r}."
        raise ValueError(msg)
    msg = f"vocabulary must be 'V1', 'V2', a Vocabulary or a folder of dictionary files, got {type(vocabulary)}."
    raise TypeError(msg)


@lru_cache(maxsize=8)
def _load_by_settings(version: str, cache_dir: str, hub_url: str) -> Vocabulary:
    return Vocabulary.load(version)
