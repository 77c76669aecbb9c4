"""``sgf.GeneformerModel``: Geneformer as a scvi-tools model, composed of one mixin per job.

Loading pretrained weights (:mod:`._pretrained`), saving and loading (:mod:`._save_load`), training
(:mod:`._training`), LoRA adapters (:mod:`._lora`) and inference (:mod:`._inference`) each live in their own module;
this one holds construction, data setup and the model's description.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LayerField, NumericalObsField
from scvi.model.base import BaseModelClass

from .._data._corpus import Corpus
from .._data._encoding import EncodingInfo, encoding_keys
from ._inference import InferenceMixin, MaskedLossMixin
from ._lora import LoraMixin, LoraSettings
from ._module import GeneformerModule
from ._network import network_arguments
from ._pretrained import PretrainedMixin
from ._save_load import SaveLoadMixin
from ._training import TrainingMixin

if TYPE_CHECKING:
    from anndata import AnnData


def data_free_registry(model_name: str) -> dict:
    """A minimal registry for a model that is not set up on any AnnData (scvi-tools needs one)."""
    import scvi

    return {
        "scvi_version": scvi.__version__,
        "model_name": model_name,
        "setup_method_name": "setup_anndata",
        "setup_args": {},
        "field_registries": {
            "X": {
                "data_registry": {},
                "state_registry": {"column_names": np.array([], dtype=object)},
                "summary_stats": {},
            }
        },
    }


class GeneformerModel(
    PretrainedMixin, SaveLoadMixin, TrainingMixin, LoraMixin, MaskedLossMixin, InferenceMixin, BaseModelClass
):
    """Geneformer: a BERT encoder over rank-value encoded transcriptomes.

    Create one from a published checkpoint or a local Hugging Face folder with :meth:`from_pretrained`, or a fresh
    (randomly initialised) model from a BERT configuration. Inference (:meth:`get_embeddings`, :meth:`predict`,
    :meth:`predict_genes` and the tools of :mod:`scgeneformer.tl`) reads any data encoded by
    :func:`scgeneformer.pp.rank_encode` with the model's vocabulary; training reads the data the model was created
    with. For inference only, :class:`~scgeneformer.InferenceModel` loads the same weights without importing
    scvi-tools and Lightning, and gives the same results.

    Parameters
    ----------
    adata
        Encoded AnnData to train on, a corpus larger than memory (:func:`~scgeneformer.read_corpus`), or ``None``.
        Data not yet registered with :meth:`setup_anndata` are registered with its defaults (no labels).
    registry
        Registry of a saved model (used by :meth:`load`).
    bert_config
        Keyword arguments of :class:`transformers.BertConfig` (a checkpoint's ``config.json``).
    vocabulary
        ``"V1"`` or ``"V2"``: the vocabulary the model's tokens come from. Inferred from ``vocab_size`` if omitted.
    checkpoint
        Name or path of the checkpoint the weights came from (informational).
    classes
        Class names of a cell-classification head (set by :meth:`train_classifier`), or ``{task: class names}`` for
        a multitask classifier.
    classifier_pooling
        ``"mean"``, ``"cls"`` or ``"pooler"``: the pooled embedding the classification heads read.
    gene_classes
        Class names of a gene-classification head (set by :meth:`train_gene_classifier`).
    lora
        Settings of LoRA adapters in the encoder (set by :meth:`add_lora`).

    Examples
    --------
    >>> model = sgf.GeneformerModel.from_pretrained("Geneformer-V1-10M")  # doctest: +SKIP
    >>> sgf.tl.embed(adata, model)  # doctest: +SKIP
    """

    _module_cls = GeneformerModule

    def __init__(
        self,
        adata: AnnData | None = None,
        registry: dict | None = None,
        *,
        bert_config: dict,
        vocabulary: str | None = None,
        checkpoint: str | None = None,
        classes: list[str] | dict[str, list[str]] | None = None,
        classifier_pooling: str = "mean",
        gene_classes: list[str] | None = None,
        lora: dict | None = None,
    ) -> None:
        corpus = None
        if isinstance(adata, Corpus):
            # A corpus on disk is read through its own loader: the model is set up on no AnnData.
            corpus, adata = adata, None
        if adata is None and registry is None:
            registry = data_free_registry(type(self).__name__)
        if adata is not None and registry is None and self._get_most_recent_anndata_manager(adata) is None:
            type(self).setup_anndata(adata)  # rank-encoded data need no other setup for unlabelled training
        super().__init__(adata, registry)
        vocabulary, arguments = network_arguments(bert_config, vocabulary, classes, classifier_pooling, gene_classes)
        self.module = GeneformerModule(**arguments)
        self.module.eval()  # inference mode until trained: no dropout
        self.lora_settings = None
        if lora is not None:
            self._inject_lora(LoraSettings(**lora))
        self._set_facts(classes, gene_classes, vocabulary, checkpoint)
        self.corpus = corpus
        self.is_trained_ = checkpoint is not None
        self.init_params_ = self._get_init_params(locals())

    # -- data --------------------------------------------------------------------------------------------------
    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        *,
        encoding_key: str = "geneformer",
        labels_key: str | None = None,
        batch_key: str | None = None,
        **kwargs,
    ) -> None:
        """Register rank-encoded data (and optional labels and batches) for training.

        Parameters
        ----------
        adata
            AnnData encoded by :func:`scgeneformer.pp.rank_encode`.
        encoding_key
            The ``key_added`` used when encoding.
        labels_key, batch_key
            Optional categorical ``.obs`` columns.

        Notes
        -----
        Like every scvi-tools model, this writes ``uns["_scvi_uuid"]`` and ``uns["_scvi_manager_uuid"]`` and, for
        categorical fields, ``obs["_scvi_labels"]``/``obs["_scvi_batch"]``.

        Examples
        --------
        >>> sgf.GeneformerModel.setup_anndata(adata, labels_key="cell_type")  # doctest: +SKIP
        >>> model = sgf.GeneformerModel.from_pretrained("Geneformer-V1-10M", adata)  # doctest: +SKIP
        """
        # First, as scvi-tools requires: the arguments are read from locals() and saved with the model.
        setup_method_args = cls._get_setup_method_args(**locals())
        if hasattr(adata, "mod"):  # a MuData: training reads one modality
            msg = (
                "GeneformerModel trains on an AnnData: pass the RNA modality, e.g. "
                "`GeneformerModel.setup_anndata(mdata['rna'])` and `GeneformerModel(mdata['rna'], ...)`."
            )
            raise TypeError(msg)
        EncodingInfo(adata, encoding_key)  # raises if the data are not encoded
        keys = encoding_keys(encoding_key)
        fields = [
            LayerField("X", keys.ranks, is_count_data=False),
            NumericalObsField("length", keys.n_tokens),
        ]
        if labels_key is not None:
            fields.append(CategoricalObsField("labels", labels_key))
        if batch_key is not None:
            fields.append(CategoricalObsField("batch", batch_key))
        manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        manager.register_fields(adata, **kwargs)
        cls.register_manager(manager)

    def _setup_encoding_key(self) -> str | None:
        return self.registry_["setup_args"].get("encoding_key")

    @property
    def summary_string(self) -> str:
        """The model's description and training status (scvi-tools' summary), always current."""
        return f"{self._summary()}\nTraining status: {'Trained' if self.is_trained_ else 'Not Trained'}"

    def _summary(self) -> str:
        config = self.module.config
        state = f"weights from {self.checkpoint}" if self.checkpoint else "untrained"
        return (
            f"GeneformerModel ({self.vocabulary_version} vocabulary): {config.num_hidden_layers} layers, hidden size "
            f"{config.hidden_size}, {config.num_attention_heads} heads, input size {config.max_position_embeddings}, "
            + state
        )

    def __repr__(self) -> str:
        return self._summary()
