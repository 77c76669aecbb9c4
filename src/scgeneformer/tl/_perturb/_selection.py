"""What a perturbation run works on: the vocabulary, the perturbed genes, the goal states and the cells.

Each function checks its part of the arguments against the data and refuses what cannot run, before any forward pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..._data._anndata import cell_mask
from ...vocabulary import get_vocabulary
from .._embed import state_embeddings
from ._spec import GoalStates

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData

    from ..._compute._execution import Execution
    from ..._data._encoding import EncodingInfo
    from ...model import GeneformerModel
    from ...vocabulary import Vocabulary
    from ._spec import PerturbationSpec


def resolve_vocabulary(vocabulary: Vocabulary | str | None, model: GeneformerModel, info: EncodingInfo) -> Vocabulary:
    """The given vocabulary, else the dictionary folder the data were encoded from, else the published one."""
    if vocabulary is None:
        source = Path(str(info.params.get("vocabulary_source", "")))
        vocabulary = (
            source if info.version == model.vocabulary_version and source.is_dir() else model.vocabulary_version
        )
    vocab = get_vocabulary(vocabulary)
    if vocab.version != model.vocabulary_version or len(vocab) != model.module.config.vocab_size:
        msg = (
            f"The vocabulary ({vocab.version}, {len(vocab)} tokens) does not match the model "
            f"({model.vocabulary_version}, {model.module.config.vocab_size} tokens)."
        )
        raise ValueError(msg)
    return vocab


def resolve_genes(genes, adata: AnnData, info: EncodingInfo, vocab: Vocabulary) -> tuple[int, ...] | None:
    """Token ids of the requested genes (``None`` for ``"all"``); unknown genes are an error."""
    if genes is None or not (isinstance(genes, str) or np.iterable(genes)):
        msg = f"genes must be 'all', a gene, or a list of genes, got {genes!r}."
        raise TypeError(msg)
    if isinstance(genes, str):
        if genes == "all":
            return None
        genes = [genes]
    genes = list(genes)
    if not genes:
        msg = "genes is empty: pass 'all' or at least one gene."
        raise ValueError(msg)
    var_position = {name: i for i, name in enumerate(adata.var_names)}
    by_vocabulary = vocab.map_gene_ids(genes)
    tokens, unknown = [], []
    for gene, token in zip(genes, by_vocabulary, strict=True):
        column = var_position.get(gene)
        if column is not None and info.var_token[column] >= 0:
            token = info.var_token[column]
        if token < 0:
            unknown.append(gene)
        else:
            tokens.append(int(token))
    if unknown:
        msg = (
            f"Genes not in the {vocab.version} vocabulary: {unknown}. Use var_names, Ensembl IDs or gene symbols of "
            "genes the model knows."
        )
        raise ValueError(msg)
    if len(set(tokens)) != len(tokens):
        msg = f"genes {genes} name the same gene more than once."
        raise ValueError(msg)
    return tuple(tokens)


def resolve_goal_states(states: GoalStates | Mapping | None, adata: AnnData, info: EncodingInfo) -> GoalStates | None:
    """The goal states of the run (``None`` without), checked against the encoded cells."""
    goal = GoalStates.coerce(states)
    if goal is not None:
        _check_states(adata, info, goal)
    return goal


def _check_states(adata: AnnData, info: EncodingInfo, goal: GoalStates) -> None:
    """Refuse a state column that is missing, or states that no encoded cell has (or that are of another type)."""
    if goal.state_key not in adata.obs.columns:
        msg = f"state_key {goal.state_key!r} is not an .obs column; available: {list(adata.obs.columns)}."
        raise KeyError(msg)
    values = adata.obs[goal.state_key].astype(object).to_numpy()
    encoded = info.lengths > 0
    missing = [s for s in goal.names if not (encoded & (values == s)).any()]
    present = set(values[encoded].tolist())
    by_text = {str(v): v for v in present}
    retyped = [s for s in missing if str(s) in by_text]
    if retyped:
        examples = ", ".join(f"{s!r} → {by_text[str(s)]!r}" for s in retyped)
        msg = (
            f"obs[{goal.state_key!r}] holds {type(next(iter(present))).__name__} values, not strings: pass the states "
            f"with that type ({examples})."
        )
        raise ValueError(msg)
    if missing:
        msg = (
            f"No encoded cells have {goal.state_key} in {missing}; values present: "
            f"{sorted(map(str, set(values)))[:20]}."
        )
        raise ValueError(msg)


def state_matrix(
    adata: AnnData,
    model: GeneformerModel,
    goal: GoalStates,
    given: pd.DataFrame | Mapping | None,
    layer: int,
    pooling: str,
    encoding_key: str,
    execution: Execution,
) -> np.ndarray:
    """Embeddings of the states, in the order start, goal, alternatives.

    ``given`` (a DataFrame indexed by state, or a mapping state → vector), or else the mean embedding of each state's
    cells from :func:`~scgeneformer.tl.state_embeddings`.
    """
    import pandas as pd

    names = goal.names
    if given is None:
        given = state_embeddings(
            adata,
            model,
            goal.state_key,
            groups=names,
            layer=layer,
            pooling=pooling,
            encoding_key=encoding_key,
            execution=execution.replace(progress_bar=False),
            inplace=False,
        )
    if isinstance(given, pd.DataFrame):
        given = {index: row.to_numpy() for index, row in given.iterrows()}
    missing = [s for s in names if str(s) not in {str(k) for k in given}]
    if missing:
        msg = f"state_embeddings has no embedding for the states {missing}."
        raise ValueError(msg)
    by_name = {str(k): np.asarray(v, dtype=np.float32).ravel() for k, v in given.items()}
    matrix = np.stack([by_name[str(s)] for s in names])
    if matrix.shape[1] != model.module.config.hidden_size:
        msg = f"State embeddings have {matrix.shape[1]} dimensions; the model has {model.module.config.hidden_size}."
        raise ValueError(msg)
    return matrix


def select_cells(
    adata: AnnData,
    info: EncodingInfo,
    cells,
    goal: GoalStates | None,
    spec: PerturbationSpec,
    max_cells: int | None,
    random_state: int,
    vocab: Vocabulary,
) -> np.ndarray:
    """Positions of the cells to perturb, longest first (ties in data order), as the reference processes them."""
    mask = info.lengths > 0
    if cells is not None:
        mask &= cell_mask(adata, cells)
    if goal is not None:
        mask &= adata.obs[goal.state_key].astype(object).to_numpy() == goal.start_state
    required = spec.required_tokens()
    if required:
        mask &= info.cells_holding(required, every=True)
    any_of = spec.any_tokens()
    if any_of:
        mask &= info.cells_holding(any_of)
    if not mask.any():
        names = ", ".join(f"{vocab.id_to_symbol[t]} ({vocab.id_to_gene[t]})" for t in required or any_of)
        need = "" if not names else f" expressing {'all' if required else 'any'} of {names}"
        msg = f"No encoded cells{need} are left after the cell filters."
        raise ValueError(msg)
    selected = np.flatnonzero(mask)
    if max_cells is not None and len(selected) > max_cells:
        order = np.random.default_rng(random_state).permutation(len(selected))
        selected = selected[order[:max_cells]]
    return selected[np.argsort(-info.lengths[selected], kind="stable")]
