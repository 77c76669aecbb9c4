"""Inference methods of :class:`~scgeneformer.GeneformerModel`: embeddings and cell and gene class predictions.

Each method reads encoded data (the data the model was set up with, or any AnnData/MuData encoded with the model's
vocabulary), runs the shared inference engine and returns plain arrays or tables; :mod:`scgeneformer.tl` writes them
into the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from .._compute._engine import InferenceResults, gene_token_mask, run_inference
from .._compute._execution import Execution
from .._data._anndata import encoding_of
from .._data._encoding import EncodingInfo

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import pandas as pd
    from anndata import AnnData
    from mudata import MuData

Pooling = Literal["mean", "cls"]


@dataclass
class Embeddings:
    """Output of :meth:`~scgeneformer.GeneformerModel.get_embeddings`.

    Attributes
    ----------
    cells
        ``(cells, hidden)`` float32 cell embeddings in the order requested (NaN rows: cells that were not encoded).
    hidden_state
        Index of the hidden state used (0: embedding layer output).
    genes
        ``(genes, hidden)`` float32: each ``.var`` gene's contextual embedding averaged over the cells where it
        occurs (NaN where it occurs in none); ``None`` unless gene embeddings were requested.
    gene_n_cells
        Per ``.var`` gene, the number of occurrences averaged over.

    Examples
    --------
    >>> out = model.get_embeddings(adata, gene_embeddings=True)  # doctest: +SKIP
    >>> out.cells.shape, out.genes.shape  # doctest: +SKIP
    """

    cells: np.ndarray
    hidden_state: int
    genes: np.ndarray | None = None
    gene_n_cells: np.ndarray | None = None


class InferenceMixin:
    """Embeddings and predictions of a :class:`~scgeneformer.GeneformerModel` or :class:`~scgeneformer.InferenceModel`.

    It needs the network (``module``, a :class:`~scgeneformer.model.GeneformerNetwork`), ``vocabulary_version``,
    ``classes``, ``gene_classes`` and, for data set up with the model, ``adata`` and ``corpus``: nothing of
    scvi-tools, so that inference runs without importing it.
    """

    def _set_facts(
        self,
        classes: list[str] | dict[str, list[str]] | None,
        gene_classes: list[str] | None,
        vocabulary: str,
        checkpoint: str | None,
    ) -> None:
        """Record what the network's heads predict, its vocabulary and where its weights came from."""
        if isinstance(classes, dict):
            self.classes = {task: list(names) for task, names in classes.items()}
        else:
            self.classes = None if classes is None else list(classes)
        self.gene_classes = None if gene_classes is None else list(gene_classes)
        self.vocabulary_version = vocabulary
        self.checkpoint = checkpoint

    def _setup_encoding_key(self) -> str | None:
        """The encoding key registered with the model's data (``None``: none registered)."""
        return None

    def check_encoding(self, info: EncodingInfo) -> None:
        """Raise if data were encoded with another vocabulary than the model's, or are longer than its input."""
        if info.version != self.vocabulary_version:
            msg = (
                f"The data were rank-encoded with the {info.version} vocabulary but the model uses "
                f"{self.vocabulary_version}; re-run "
                f"`sgf.pp.rank_encode(adata, vocabulary='{self.vocabulary_version}')`."
            )
            raise ValueError(msg)
        max_len = self.module.config.max_position_embeddings
        if info.lengths.max(initial=0) > max_len:
            msg = f"Encoded cells are longer ({info.lengths.max()}) than the model's input size {max_len}."
            raise ValueError(msg)

    def encoding_info(
        self, adata: AnnData | MuData | None = None, *, encoding_key: str | None = None, mod: str = "rna"
    ) -> EncodingInfo:
        """The encoding a method reads, checked against the model's vocabulary and input size.

        It is the encoding of ``adata`` (AnnData or the ``mod`` modality of a MuData), or of the data the model was
        set up with. ``encoding_key`` defaults to the one registered with :meth:`setup_anndata`, else ``"geneformer"``.
        """
        key = encoding_key or self._setup_encoding_key() or "geneformer"
        if adata is None and getattr(self, "corpus", None) is not None:
            self.check_encoding(self.corpus)
            return self.corpus
        if adata is None:
            if self.adata is None:
                msg = (
                    "This model is not set up on any data: pass encoded data (`adata=`), or create the model with it, "
                    "e.g. `GeneformerModel.from_pretrained(name, adata)`."
                )
                raise ValueError(msg)
            adata = self.adata
        info = encoding_of(adata, key, mod)
        self.check_encoding(info)
        return info

    @property
    def training_data(self) -> AnnData | None:
        """The AnnData whose ``.obs`` training reads (labels, groups): the model's data, or its corpus's annotations."""
        corpus = getattr(self, "corpus", None)
        return corpus.adata if corpus is not None else self.adata

    def hidden_state_index(self, layer: int) -> int:
        """The hidden state (0: embedding layer output, ``n_layers``: last layer) that ``layer`` selects.

        See :func:`scgeneformer.tl.embed` for the meaning of ``layer``.
        """
        return self.module.hidden_state_index(layer)

    def _cells(self, info: EncodingInfo, indices) -> np.ndarray:
        if indices is None:
            return np.arange(info.n_cells)
        cells = np.asarray(indices).reshape(-1)
        if cells.dtype == bool:
            if cells.shape != (info.n_cells,):
                msg = f"A boolean indices mask needs one value per cell ({info.n_cells}), got {cells.shape}."
                raise ValueError(msg)
            return np.flatnonzero(cells)
        if cells.dtype.kind not in "iu" or (len(cells) and (cells.min() < 0 or cells.max() >= info.n_cells)):
            msg = f"indices must be integer positions in [0, {info.n_cells}) or a boolean mask."
            raise ValueError(msg)
        return cells.astype(np.int64)

    def get_embeddings(
        self,
        adata: AnnData | MuData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        *,
        layer: int = -1,
        pooling: Pooling = "mean",
        gene_embeddings: bool = False,
        gene_embedding_cells: np.ndarray | None = None,
        encoding_key: str | None = None,
        mod: str = "rna",
        execution: Execution | Mapping | None = None,
    ) -> Embeddings:
        """Cell embeddings, and optionally each gene's contextual embedding averaged over cells, in one pass.

        Parameters
        ----------
        adata
            Encoded data; default: the data the model was set up with.
        indices
            Cells to embed (positions or a boolean mask); default all.
        layer, pooling
            As in :func:`scgeneformer.tl.embed`.
        gene_embeddings
            Also average each gene's contextual embedding over the cells where it occurs.
        gene_embedding_cells
            Boolean mask over all cells restricting the gene embeddings to those cells (default: ``indices``).
        encoding_key, mod
            Where the encoding is stored (see :meth:`encoding_info`).
        execution
            How to run (see :class:`~scgeneformer.Execution`).

        Returns
        -------
        An :class:`~scgeneformer.model.Embeddings`.

        Examples
        --------
        >>> out = model.get_embeddings(adata, layer=0, pooling="mean")  # doctest: +SKIP
        >>> out.cells.shape  # doctest: +SKIP
        (2700, 256)
        """
        info = self.encoding_info(adata, encoding_key=encoding_key, mod=mod)
        n_run = self.hidden_state_index(layer)
        if pooling not in ("mean", "cls"):
            msg = f"pooling must be 'mean' or 'cls', got {pooling!r}."
            raise ValueError(msg)
        special = info.has_special_tokens
        if pooling == "cls" and not special:
            msg = "pooling='cls' needs a V2 model (V1 cells have no <cls> token); use pooling='mean'."
            raise ValueError(msg)
        cells = self._cells(info, indices)
        gene_cells = None
        if gene_embeddings:
            if gene_embedding_cells is None:
                gene_cells = np.zeros(info.n_cells, dtype=bool)
                gene_cells[cells] = True
            else:
                gene_cells = np.asarray(gene_embedding_cells)
                if gene_cells.dtype != bool or gene_cells.shape != (info.n_cells,):
                    msg = f"gene_embedding_cells must be a boolean mask over the {info.n_cells} cells."
                    raise ValueError(msg)
        config = self.module.config

        def compute(module, batch_cells, ids, mask):
            hidden = module.encode(ids, mask, n_run).float()
            out = {"cells": module.pool(hidden, ids, mask, pooling)}
            if gene_cells is not None:
                use = torch.as_tensor(gene_cells[batch_cells], device=ids.device)[:, None]
                use = use & gene_token_mask(ids, mask, special)
                out["token_ids"], out["token_values"] = ids[use], hidden[use]
            return out

        results = InferenceResults(
            cells,
            info.n_cells,
            cell_width=config.hidden_size,
            token_shape=None if gene_cells is None else (config.vocab_size, config.hidden_size),
        )
        run_inference(self.module, info, cells, compute, results, Execution.coerce(execution), description="embedding")
        out = Embeddings(results.cell_values, n_run)
        if gene_cells is not None:
            out.genes, out.gene_n_cells = _per_var_means(info, results.token_sums, results.token_counts)
        return out

    def get_latent_representation(
        self,
        adata: AnnData | MuData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        *,
        layer: int = -1,
        pooling: Pooling = "mean",
        encoding_key: str | None = None,
        mod: str = "rna",
        execution: Execution | Mapping | None = None,
    ) -> np.ndarray:
        """Cell embeddings ``(cells, hidden)``, as scvi-tools models name them (see :meth:`get_embeddings`).

        Examples
        --------
        >>> adata.obsm["X_geneformer"] = model.get_latent_representation(adata)  # doctest: +SKIP
        """
        return self.get_embeddings(
            adata, indices, layer=layer, pooling=pooling, encoding_key=encoding_key, mod=mod, execution=execution
        ).cells

    def predict(
        self,
        adata: AnnData | MuData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        *,
        soft: bool = False,
        encoding_key: str | None = None,
        mod: str = "rna",
        execution: Execution | Mapping | None = None,
    ) -> pd.Categorical | pd.DataFrame:
        """Cell labels predicted by the classification head (see :meth:`train_classifier`).

        Parameters
        ----------
        adata
            Encoded data (its genes may differ from the training data's); default: the data the model was set up with.
        indices
            Cells to classify (positions or a boolean mask); default all.
        soft
            Return each class's probability instead of the most probable class.
        encoding_key, mod, execution
            As in :meth:`get_embeddings`.

        Returns
        -------
        ``soft=False``: a :class:`pandas.Categorical` of labels (NaN for cells that were not encoded).
        ``soft=True``: a DataFrame of class probabilities indexed by obs names (NaN rows for cells not encoded).
        A multitask classifier gives ``{task: ...}`` of these.

        Examples
        --------
        >>> labels = model.predict(query)  # doctest: +SKIP
        >>> probabilities = model.predict(query, soft=True)  # doctest: +SKIP
        """
        import pandas as pd

        if self.module.classifier is None:
            msg = "The model has no classification head; fine-tune it with `model.train_classifier()` first."
            raise ValueError(msg)
        info = self.encoding_info(adata, encoding_key=encoding_key, mod=mod)
        cells = self._cells(info, indices)

        tasks = self.classes if isinstance(self.classes, dict) else {None: list(self.classes)}

        def compute(module, batch_cells, ids, mask):
            logits = module.classify(ids, mask)
            parts = logits.values() if isinstance(logits, dict) else [logits]
            return {"cells": torch.cat([torch.softmax(part.float(), -1) for part in parts], dim=1)}

        results = InferenceResults(cells, info.n_cells, cell_width=sum(len(c) for c in tasks.values()))
        run_inference(
            self.module, info, cells, compute, results, Execution.coerce(execution), description="classifying"
        )
        out, start = {}, 0
        for task, classes in tasks.items():
            probabilities = results.cell_values[:, start : start + len(classes)]
            start += len(classes)
            if soft:
                out[task] = pd.DataFrame(probabilities, index=info.adata.obs_names[cells], columns=list(classes))
            else:
                encoded = ~np.isnan(probabilities).any(1)
                codes = np.full(len(cells), -1)
                codes[encoded] = probabilities[encoded].argmax(1)
                out[task] = pd.Categorical.from_codes(codes, categories=list(classes))
        return out if isinstance(self.classes, dict) else out[None]

    def predict_genes(
        self,
        adata: AnnData | MuData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        *,
        soft: bool = False,
        encoding_key: str | None = None,
        mod: str = "rna",
        execution: Execution | Mapping | None = None,
    ) -> pd.Categorical | pd.DataFrame:
        """Gene classes predicted by the gene-classification head (see :meth:`train_gene_classifier`).

        Every gene token of the chosen cells is classified; a gene's class probabilities are the mean of its
        per-token probabilities over the cells whose encoding holds it.

        Parameters
        ----------
        adata, indices, encoding_key, mod, execution
            As in :meth:`predict`; ``indices`` are the cells whose genes are classified.
        soft
            Return each class's probability instead of the most probable class.

        Returns
        -------
        Per ``.var`` gene: a :class:`pandas.Categorical` of classes, or (``soft=True``) a DataFrame of class
        probabilities indexed by ``var_names``; NaN for genes that occur in none of the cells.

        Examples
        --------
        >>> model.predict_genes(adata, soft=True).head()  # doctest: +SKIP
        """
        import pandas as pd

        if self.module.gene_classifier is None:
            msg = "The model has no gene-classification head; fine-tune it with `model.train_gene_classifier()` first."
            raise ValueError(msg)
        info = self.encoding_info(adata, encoding_key=encoding_key, mod=mod)
        cells = self._cells(info, indices)
        special = self.module.special_tokens

        def compute(module, batch_cells, ids, mask):
            logits = module.classify_genes(ids, mask)
            genes = gene_token_mask(ids, mask, has_special_tokens=special)
            return {"token_ids": ids[genes], "token_values": torch.softmax(logits[genes].float(), -1)}

        shape = (self.module.config.vocab_size, len(self.gene_classes))
        results = InferenceResults(cells, info.n_cells, token_shape=shape)
        run_inference(
            self.module, info, cells, compute, results, Execution.coerce(execution), description="classifying genes"
        )
        probabilities, _ = _per_var_means(info, results.token_sums, results.token_counts)
        if soft:
            return pd.DataFrame(probabilities, index=info.adata.var_names, columns=list(self.gene_classes))
        seen = ~np.isnan(probabilities).any(1)
        codes = np.full(len(probabilities), -1)
        codes[seen] = probabilities[seen].argmax(1)
        return pd.Categorical.from_codes(codes, categories=list(self.gene_classes))


class MaskedLossMixin:
    """The masked-gene loss of a :class:`~scgeneformer.GeneformerModel` (it runs the scvi-tools module's loss)."""

    def get_reconstruction_error(
        self,
        adata: AnnData | MuData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        *,
        mlm_probability: float = 0.15,
        seed: int = 1234,
        encoding_key: str | None = None,
        mod: str = "rna",
        execution: Execution | Mapping | None = None,
    ) -> dict[str, float]:
        """Masked-gene loss and accuracy of cells, with masks drawn as in :meth:`train` (seeded, so repeatable).

        Use it to compare models on the same held-out cells, e.g. before and after (continued) pretraining.

        Parameters
        ----------
        adata, indices, encoding_key, mod, execution
            As in :meth:`get_embeddings`.
        mlm_probability
            Share of gene tokens masked.
        seed
            Seed of the masks: the same seed masks the same positions.

        Returns
        -------
        ``{"loss": mean cross-entropy per masked gene, "accuracy": share predicted exactly, "n_masked": genes
        masked, "n_cells": cells}``.

        Examples
        --------
        >>> model.get_reconstruction_error(adata, model.validation_indices)  # doctest: +SKIP
        """
        from ._datamodule import TokenCollator, TokenDataModule

        info = self.encoding_info(adata, encoding_key=encoding_key, mod=mod)
        cells = self._cells(info, indices)
        cells = cells[info.lengths[cells] > 0]
        execution = Execution.coerce(execution)
        device = execution.device
        collator = TokenCollator(
            info, vocab_size=self.module.config.vocab_size, mlm_probability=mlm_probability, seed=seed, fixed_masks=True
        )
        empty = cells[:0]
        loader = TokenDataModule(
            info,
            collator=collator,
            split=(empty, cells, empty),
            token_budget=execution.token_budget_for(device.type),
            max_cells=execution.batch_size,
        ).val_dataloader()
        total = correct = 0.0
        n = 0
        module = self.module.to(device)
        was_training = module.training
        module.eval()
        try:
            with torch.inference_mode(), execution.autocast(device):
                for batch in loader:
                    batch = {k: v.to(device) for k, v in batch.items()}
                    _, generative, loss = module(batch)
                    k = len(generative["targets"])
                    total += float(loss.loss) * k
                    correct += float((generative["logits"].argmax(-1) == generative["targets"]).sum())
                    n += k
        finally:
            module.train(was_training)
        return {"loss": total / max(n, 1), "accuracy": correct / max(n, 1), "n_masked": n, "n_cells": len(cells)}


def _per_var_means(info: EncodingInfo, sums: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-token sums averaged and spread over ``.var`` genes (float32, NaN where a gene never occurs)."""
    token = info.var_token
    in_vocabulary = token >= 0
    n = np.zeros(len(token), dtype=np.int64)
    n[in_vocabulary] = counts[token[in_vocabulary]]
    means = np.full((len(token), sums.shape[1]), np.nan, dtype=np.float32)
    seen = n > 0
    means[seen] = (sums[token[seen]] / n[seen, None]).astype(np.float32)
    return means, n
