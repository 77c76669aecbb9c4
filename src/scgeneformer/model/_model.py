"""``sgf.GeneformerModel``: Geneformer as a scvi-tools model."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LayerField, NumericalObsField
from scvi.model.base import BaseModelClass

from .._compute._execution import Execution
from .._compute._lightning import lightning_run, trainer_defaults
from .._data._encoding import EncodingInfo, encoding_keys
from .._hub._checkpoints import get_checkpoint
from ._inference import InferenceMixin
from ._loading import VOCABULARY_BY_SIZE, data_free_registry, load_hf_weights, plain_config
from ._lora import LoraSettings
from ._module import GeneformerModule
from ._tasks import CellClassificationTask, GeneClassificationTask, MaskedGeneTask, TrainingTask
from ._training import check_plan_kwargs, train_runner

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from anndata import AnnData

    from .._data._corpus import Corpus
    from ._gene_classifier import GeneLabels


def _is_repo_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~"))


def hub_snapshot(repo_id: str, revision: str | None = None) -> Path:
    """A local copy of a Hugging Face model repository, downloaded into ``sgf.settings.cache_dir / "hub"``.

    Without network access the copy already in that cache is used; a clear error says when there is none.
    """
    from .._settings import settings

    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # transformers depends on it, but keep the message clear
        msg = "Loading from the Hugging Face hub needs huggingface_hub: pip install huggingface_hub"
        raise ImportError(msg) from e
    cache = Path(settings.cache_dir) / "hub"
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache))
    except Exception as online_error:  # noqa: BLE001 - offline, unknown repository, ...
        try:
            return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True))
        except Exception:  # noqa: BLE001 - report the download error, which says why
            reason = f"{type(online_error).__name__}: {online_error}"
            msg = f"Could not get the Hugging Face repository {repo_id!r} ({reason})."
            raise FileNotFoundError(msg) from online_error


class GeneformerModel(InferenceMixin, BaseModelClass):
    """Geneformer: a BERT encoder over rank-value encoded transcriptomes.

    Create one from a published checkpoint or a local Hugging Face folder with :meth:`from_pretrained`, or a fresh
    (randomly initialised) model from a BERT configuration. Inference (:meth:`get_embeddings`, :meth:`predict`,
    :meth:`predict_genes` and the tools of :mod:`scgeneformer.tl`) reads any data encoded by
    :func:`scgeneformer.pp.rank_encode` with the model's vocabulary; training reads the data the model was created
    with.

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
        from .._data._corpus import Corpus

        corpus = None
        if isinstance(adata, Corpus):
            # A corpus on disk is read through its own loader: the model is set up on no AnnData.
            corpus, adata = adata, None
        if adata is None and registry is None:
            registry = data_free_registry(type(self).__name__)
        if adata is not None and registry is None and self._get_most_recent_anndata_manager(adata) is None:
            type(self).setup_anndata(adata)  # rank-encoded data need no other setup for unlabelled training
        super().__init__(adata, registry)
        vocabulary = vocabulary or VOCABULARY_BY_SIZE.get(int(bert_config["vocab_size"]))
        if vocabulary not in ("V1", "V2"):
            msg = "Cannot tell the model's vocabulary from its vocab_size; pass vocabulary='V1' or 'V2'."
            raise ValueError(msg)
        if isinstance(classes, dict):
            n_classes = {task: len(names) for task, names in classes.items()}
        else:
            n_classes = None if classes is None else len(classes)
        self.module = GeneformerModule(
            bert_config,
            n_classes=n_classes,
            classifier_pooling=classifier_pooling,
            special_tokens=vocabulary == "V2",
            n_gene_classes=None if gene_classes is None else len(gene_classes),
        )
        self.module.eval()  # inference mode until trained: no dropout
        self.lora_settings = None
        if lora is not None:
            self._inject_lora(LoraSettings(**lora))
        if isinstance(classes, dict):
            self.classes = {task: list(names) for task, names in classes.items()}
        else:
            self.classes = None if classes is None else list(classes)
        self.gene_classes = None if gene_classes is None else list(gene_classes)
        self.vocabulary_version = vocabulary
        self.corpus = corpus
        self.checkpoint = checkpoint
        self.is_trained_ = checkpoint is not None
        self._model_summary_string = self._summary()
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
        EncodingInfo(adata, encoding_key)  # raises if the data are not encoded
        keys = encoding_keys(encoding_key)
        setup_method_args = cls._get_setup_method_args(**locals())
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

    # -- construction --------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        adata: AnnData | None = None,
        *,
        vocabulary: str | None = None,
        revision: str | None = None,
        quantization: str | None = None,
    ) -> GeneformerModel:
        """Load published weights by name (see :func:`scgeneformer.list_models`), a folder or a Hugging Face repo.

        Published weights are downloaded once into ``sgf.settings.cache_dir`` and checked against their sha256. A
        folder is a Hugging Face model folder (``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``)
        or a model saved with :meth:`save`. A Hugging Face repository id (``"owner/name"``) is downloaded with
        ``huggingface_hub`` into ``sgf.settings.cache_dir / "hub"`` (offline: taken from there).

        Parameters
        ----------
        name_or_path
            A checkpoint name or alias (e.g. ``"Geneformer-V1-10M"``, ``"V2-104M"``), a folder, or a repository id.
        adata
            Optional encoded AnnData to train on (registered with :meth:`setup_anndata`'s defaults if it was not), or
            a corpus larger than memory (:func:`~scgeneformer.read_corpus`).
        vocabulary
            ``"V1"``/``"V2"``; needed only for a local folder whose ``vocab_size`` is not a Geneformer one.
        revision
            Commit or tag of a Hugging Face repository (default: its main branch).
        quantization
            ``"8bit"`` or ``"4bit"``: load the encoder quantized with bitsandbytes, on a CUDA GPU, for inference
            (``quantization`` extra). Training needs full-precision weights.

        Notes
        -----
        Checkpoints of ``BertForSequenceClassification`` (e.g. ``"cardiomyopathy-classifier"``) load as cell
        classifiers with their head, BERT's pooler and class names (``config.json``'s ``id2label``, or for published
        classifiers the registry's names), so :func:`scgeneformer.tl.annotate` works with them directly;
        ``BertForTokenClassification`` checkpoints load as gene classifiers.

        Examples
        --------
        >>> model = sgf.GeneformerModel.from_pretrained("Geneformer-V2-104M")  # doctest: +SKIP
        """
        bits = None
        if quantization is not None:
            from ._lora import check_quantization

            bits = check_quantization(quantization)  # before anything is downloaded
        checkpoint = get_checkpoint(str(name_or_path))
        if checkpoint is not None:
            folder = checkpoint.local_folder()
            vocabulary = vocabulary or checkpoint.vocabulary
            label = checkpoint.name
        else:
            folder = Path(name_or_path).expanduser()
            if not folder.exists() and _is_repo_id(str(name_or_path)):
                folder = hub_snapshot(str(name_or_path), revision)
            if (folder / "model.json").is_file():
                return cls.load(folder, adata)
            if not (folder / "config.json").is_file():
                msg = (
                    f"{name_or_path!r} is neither a published checkpoint (see `sgf.list_models()`) nor a folder "
                    "with config.json and model.safetensors or pytorch_model.bin, nor a saved model."
                )
                raise FileNotFoundError(msg)
            label = str(name_or_path) if not Path(name_or_path).exists() else str(folder)
        if bits is not None:
            return cls._quantized(folder, adata, vocabulary, label, bits)
        hf_model, head = load_hf_weights(folder, vocabulary)
        bert_config = plain_config(hf_model.config)
        with torch.device("meta"):  # skip the random initialisation that the weights replace anyway
            model = cls(adata, bert_config=bert_config, vocabulary=vocabulary, checkpoint=label)
        model.module.mlm = hf_model
        if head is not None:
            names = list(checkpoint.classes) if checkpoint is not None and checkpoint.classes else head.labels
            model._install_head(head, names)
        model.module.eval()
        return model

    def _install_head(self, head, names: list[str]) -> None:
        """Put a checkpoint's classification head (and pooler) on the model, with its class names."""
        from ._module import classification_head

        hidden = self.module.config.hidden_size
        layer = classification_head(hidden, len(names), self.module.config.hidden_dropout_prob)
        with torch.no_grad():
            layer[1].weight.copy_(head.weight)
            layer[1].bias.copy_(head.bias)
        if head.kind == "gene":
            self.module.gene_classifier = layer
            self.gene_classes = list(names)
            self.init_params_["non_kwargs"].update(gene_classes=self.gene_classes)
            return
        from transformers.models.bert.modeling_bert import BertPooler

        pooler = BertPooler(self.module.config)
        with torch.no_grad():
            pooler.dense.weight.copy_(head.pooler[0])
            pooler.dense.bias.copy_(head.pooler[1])
        self.module.classifier, self.module.pooler, self.module.classifier_pooling = layer, pooler, "pooler"
        self.classes = list(names)
        self.init_params_["non_kwargs"].update(classes=self.classes, classifier_pooling="pooler")

    @classmethod
    def _quantized(cls, folder: Path, adata, vocabulary: str | None, label: str, bits: int):
        import json

        from .._compute._execution import Execution
        from ._loading import classifier_head
        from ._lora import quantized_bert

        hf_model = quantized_bert(folder, bits, Execution().device)
        bert_config = plain_config(hf_model.config)
        with torch.device("meta"):
            model = cls(adata, bert_config=bert_config, vocabulary=vocabulary, checkpoint=f"{label} ({bits}-bit)")
        model.module.mlm = hf_model
        head = classifier_head(folder, json.loads((folder / "config.json").read_text()))
        if head is not None:
            model._install_head(head, head.labels)
            model.module.classifier.to(Execution().device)
        model.module.eval()
        return model

    def save(
        self,
        dir_path: str | os.PathLike,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        **anndata_write_kwargs,
    ) -> None:
        """Save the model: weights as safetensors, everything else as JSON, and a model card, written atomically.

        Killing the process at any moment leaves the previous model (or the new one) loadable; nothing written can
        run code when loaded (see the "Data safety" page). The model card, ``README.md``, records the base
        checkpoint, vocabulary, training data, labels, test metrics and package version
        (:func:`~scgeneformer.model.read_model_card` reads it back); the folder can be uploaded to the Hugging Face hub
        as it is and loaded with :meth:`from_pretrained`.

        Parameters
        ----------
        dir_path
            Folder to save into (created if needed).
        prefix
            Prefix of the file names, to keep several models in one folder.
        overwrite
            Replace a model saved there before.
        save_anndata
            Also write the model's data as ``adata.h5ad`` (``mdata.h5mu`` for MuData).
        **anndata_write_kwargs
            Arguments of ``write_h5ad``.

        Examples
        --------
        >>> model.save("my_classifier")  # doctest: +SKIP
        """
        from .._utils._files import atomic_path
        from ._card import write_model_card
        from ._saving import save_model

        prefix = prefix or ""
        save_model(self, dir_path, overwrite=overwrite, prefix=prefix)
        write_model_card(self, Path(dir_path), prefix)
        if save_anndata and self.adata is not None:
            name = "mdata.h5mu" if type(self.adata).__name__ == "MuData" else "adata.h5ad"
            with atomic_path(Path(dir_path) / f"{prefix}{name}") as temporary:
                self.adata.write(temporary, **anndata_write_kwargs)

    @classmethod
    def load(
        cls, dir_path: str | os.PathLike, adata: AnnData | None = None, *, prefix: str | None = None
    ) -> GeneformerModel:
        """Load a model saved with :meth:`save`, on the CPU; set up on ``adata`` when given.

        Only JSON and safetensors are read (pickled ``model.pt`` files are refused: loading them could run code).
        A folder saved with ``save_anndata=True`` brings its data back too. Corrupted or incomplete folders, and
        Hugging Face folders (load those with :meth:`from_pretrained`), give a clear error.

        Examples
        --------
        >>> model.save("my_classifier")  # doctest: +SKIP
        >>> model = sgf.GeneformerModel.load("my_classifier")  # doctest: +SKIP
        """
        from ._saving import load_model

        prefix = prefix or ""
        folder = Path(dir_path)
        if adata is None and (folder / f"{prefix}adata.h5ad").is_file():
            import anndata

            adata = anndata.read_h5ad(folder / f"{prefix}adata.h5ad")
        elif adata is None and (folder / f"{prefix}mdata.h5mu").is_file():
            import mudata

            adata = mudata.read_h5mu(folder / f"{prefix}mdata.h5mu")
        return load_model(cls, folder, adata, prefix=prefix)

    def copy(self, adata: AnnData | Corpus | None = None, *, encoding_key: str | None = None) -> GeneformerModel:
        """An independent copy of the model (weights, heads, vocabulary), set up on ``adata`` or on no data.

        ``adata`` may be a corpus larger than memory (:func:`~scgeneformer.read_corpus`).

        Fine-tuning the copy leaves this model unchanged, e.g. to fine-tune one copy per cross-validation fold.
        ``adata`` not yet registered with :meth:`setup_anndata` (with ``encoding_key``, when given) is registered.

        Examples
        --------
        >>> fold_model = model.copy(adata)  # doctest: +SKIP
        """
        from .._data._corpus import Corpus

        if adata is not None and not isinstance(adata, Corpus):
            manager = self._get_most_recent_anndata_manager(adata)
            registered = None if manager is None else manager.registry["setup_args"].get("encoding_key")
            if manager is None or (encoding_key is not None and registered != encoding_key):
                type(self).setup_anndata(adata, encoding_key=encoding_key or "geneformer")
        with torch.device("meta"):  # skip initialising weights that the copied module replaces
            clone = type(self)(adata, **self.init_params_["non_kwargs"])
        clone.module = copy.deepcopy(self.module)
        clone.checkpoint = self.checkpoint
        clone.is_trained_ = self.is_trained_
        clone._model_summary_string = clone._summary()
        return clone

    # -- parameter-efficient fine-tuning ---------------------------------------------------------------------------
    def add_lora(
        self,
        r: int = 8,
        alpha: float = 16,
        dropout: float = 0.1,
        target_modules: Sequence[str] = ("query", "key", "value"),
    ) -> None:
        """Add LoRA adapters (``peft``) to the encoder; training then updates only them and the task heads.

        Every training method (:meth:`train`, :meth:`train_classifier`, :meth:`train_gene_classifier`) trains the
        adapters instead of the encoder's weights, which stay as they are: a fraction of the parameters and of the
        optimiser's memory. The adapters are saved and loaded with the model, work in every tool (embeddings,
        annotation, perturbation), and :meth:`merge_lora` folds them into the weights. Needs the ``lora`` extra
        (``pip install 'scgeneformer[lora]'``).

        Parameters
        ----------
        r
            Rank of each adapter.
        alpha
            Scaling of the adapters' update (``alpha / r``).
        dropout
            Dropout on the adapters' input.
        target_modules
            Linear layers that get adapters: ``("query", "key", "value")`` (attention) or, adding ``"dense"``, the
            feed-forward and attention-output layers too.

        Examples
        --------
        >>> model = sgf.GeneformerModel.from_pretrained("Geneformer-V2-104M", adata)  # doctest: +SKIP
        >>> model.add_lora(r=8)  # doctest: +SKIP
        >>> model.train_classifier(labels_key="cell_type")  # doctest: +SKIP
        """
        if self.lora_settings is not None:
            msg = "The model has LoRA adapters already; merge them first with `merge_lora()` to add new ones."
            raise ValueError(msg)
        settings = LoraSettings(r=r, alpha=alpha, dropout=dropout, target_modules=list(target_modules))
        self._inject_lora(settings)
        self.init_params_["non_kwargs"]["lora"] = settings.to_params()

    def _inject_lora(self, settings: LoraSettings) -> None:
        from ._lora import inject_lora

        inject_lora(self.module.mlm.bert, settings)
        self.lora_settings = settings

    def merge_lora(self) -> int:
        """Fold the LoRA adapters into the encoder's weights and remove them; returns how many were merged.

        The merged model computes the same outputs without the adapters' overhead.

        Examples
        --------
        >>> model.merge_lora()  # doctest: +SKIP
        """
        from ._lora import merge_lora

        merged = merge_lora(self.module.mlm.bert)
        self.lora_settings = None
        self.init_params_["non_kwargs"]["lora"] = None
        return merged

    def trainable_parameters(self) -> tuple[int, int]:
        """``(trainable, total)`` parameter counts as the next training would set them (with the current heads).

        Examples
        --------
        >>> model.add_lora(r=8)  # doctest: +SKIP
        >>> trainable, total = model.trainable_parameters()  # doctest: +SKIP
        """
        from ._tasks import TrainingTask

        parameters = list(self.module.parameters())
        flags = [p.requires_grad for p in parameters]
        TrainingTask().set_trainable(self.module)  # LoRA-aware: adapters and heads only when adapters exist
        trainable = sum(p.numel() for p in parameters if p.requires_grad)
        for p, flag in zip(parameters, flags, strict=True):
            p.requires_grad = flag
        return trainable, sum(p.numel() for p in parameters)

    # -- training ------------------------------------------------------------------------------------------------
    def train(
        self,
        max_epochs: int = 1,
        *,
        mlm_probability: float = 0.15,
        train_size: float = 0.9,
        validation_size: float | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        seed: int = 0,
        plan_kwargs: dict | None = None,
        execution: Execution | Mapping | None = None,
        **trainer_kwargs,
    ) -> None:
        """Masked-gene pretraining (or continued pretraining of a published checkpoint) on the model's data.

        Of each cell's gene tokens, ``mlm_probability`` are selected (special tokens and padding never); 80% of those
        become ``<mask>``, 10% a random gene, 10% stay, and the loss is the cross-entropy of the selected genes,
        computed only at those positions. Batches hold cells of similar length under the execution's token budget
        and are padded only to their longest cell. Every encoder parameter and the masked-gene head train.

        Parameters
        ----------
        max_epochs
            Passes over the training cells.
        mlm_probability
            Share of gene tokens selected for prediction.
        train_size, validation_size
            Shares of encoded cells used for training and validation (the rest is the test set). Validation loss
            and masked-gene accuracy are logged each epoch when there are validation cells.
        checkpoint_dir
            Save a Lightning checkpoint at the end of every epoch here (resume with ``ckpt_path=``).
        seed
            Seed of the split, the batch order, the masking and the initial weights of new layers.
        plan_kwargs
            Optimiser settings of :class:`~scgeneformer.model.GeneformerTrainingPlan`: ``lr`` (default 5e-5),
            ``weight_decay`` (0.001), ``warmup_steps`` (0.05: a fraction of all steps, or a number of steps) and
            ``schedule`` (``"linear"``, ``"cosine"`` or ``"constant"``), ``attention_dropout`` (default: only on
            CUDA, see :class:`~scgeneformer.model.GeneformerTrainingPlan`).
        execution
            Devices, processes, precision and the batch size in padded tokens (:class:`~scgeneformer.Execution`;
            for training the default budget is 8,192 tokens on CPU and 32,768 on GPUs), e.g.
            ``{"accelerator": "cuda", "devices": 4, "strategy": "ddp", "precision": "bf16"}``.
        **trainer_kwargs
            Further :class:`lightning.pytorch.Trainer` arguments (``gradient_clip_val``, default 1.0; ``callbacks``;
            ``ckpt_path`` to resume from a checkpoint; ``max_steps`` …).

        Examples
        --------
        >>> model = sgf.GeneformerModel.from_pretrained("Geneformer-V1-10M", adata)  # doctest: +SKIP
        >>> model.train(max_epochs=1, plan_kwargs={"lr": 1e-4})  # doctest: +SKIP
        """
        task = MaskedGeneTask(mlm_probability=mlm_probability, train_size=train_size, validation_size=validation_size)
        callbacks = list(trainer_kwargs.pop("callbacks", []))
        if checkpoint_dir is not None:
            from lightning.pytorch.callbacks import ModelCheckpoint

            callbacks.append(ModelCheckpoint(dirpath=checkpoint_dir, save_top_k=-1, every_n_epochs=1))
        self._fit(
            task,
            max_epochs=max_epochs,
            seed=seed,
            plan_kwargs=plan_kwargs,
            execution=execution,
            callbacks=callbacks,
            **trainer_kwargs,
        )

    def train_classifier(
        self,
        max_epochs: int = 10,
        *,
        labels_key: str | Sequence[str] | None = None,
        loss_weights: Sequence[float] | None = None,
        test_cells: np.ndarray | str | Sequence[str] | None = None,
        pooling: str | None = None,
        dropout: float = 0.1,
        freeze_layers: int = 0,
        freeze_embeddings: bool = False,
        group_key: str | None = None,
        train_size: float = 0.8,
        validation_size: float = 0.1,
        early_stopping_patience: int | None = 3,
        seed: int = 0,
        plan_kwargs: dict | None = None,
        execution: Execution | Mapping | None = None,
        **trainer_kwargs,
    ) -> dict:
        """Fine-tune the model to classify cells by an ``.obs`` column, or by several at once (multitask).

        A classification head (dropout and a linear layer) reads the pooled last-layer embedding; with several label
        columns, one head per column shares the encoder and the loss is the weighted sum of each task's
        cross-entropy (cells missing a task's label do not count for it). Cells are split
        into training, validation and test sets, stratified by label or, with ``group_key``, by whole groups (e.g.
        donors, so that no donor is in two sets). The weights of the epoch with the best validation macro-F1 are
        kept (training stops after ``early_stopping_patience`` epochs without improvement), then the test set is
        evaluated. Every argument is checked before the model changes.

        Parameters
        ----------
        max_epochs
            Maximum passes over the training cells.
        labels_key
            ``.obs`` column(s) of the labels; default the ``labels_key`` registered with :meth:`setup_anndata`.
            Several columns train a multitask classifier.
        loss_weights
            Multitask: the weight of each task's loss (default 1 each).
        test_cells
            Cells held out as the test set (a boolean mask, a boolean ``.obs`` column or obs names), e.g. a
            cross-validation fold; the other labelled cells are split into training and validation in the ratio
            ``train_size : validation_size``.
        pooling
            ``"mean"`` (default), ``"cls"`` (V2 only), or ``"pooler"`` (classifiers loaded from Hugging Face
            sequence-classification checkpoints): the embedding the head reads.
        dropout
            Dropout before the head.
        freeze_layers
            Freeze the first ``freeze_layers`` encoder layers (and, with ``freeze_embeddings``, the embeddings).
        freeze_embeddings
            Freeze the embeddings.
        group_key
            ``.obs`` column whose groups are kept whole across the splits.
        train_size, validation_size
            Shares of labelled cells (or groups) for training and validation; the rest is the test set.
        early_stopping_patience
            Stop after this many epochs without a better validation macro-F1 (``None``: never).
        seed, plan_kwargs, execution, **trainer_kwargs
            As in :meth:`train`.

        Returns
        -------
        Test-set ``accuracy``, ``macro_f1``, ``confusion_matrix`` (rows: true, columns: predicted), ``classes``,
        ``n_cells``, ``validation_macro_f1`` (of the kept epoch) and ``test_cells`` (their obs names, e.g. to
        evaluate or perturb only held-out cells); for a multitask classifier, ``tasks`` holds each task's metrics
        and ``accuracy``/``macro_f1`` are their means. Also stored in ``model.classification_report_``, with the
        validation history in ``history_``.

        Examples
        --------
        >>> sgf.GeneformerModel.setup_anndata(adata, labels_key="cell_type")  # doctest: +SKIP
        >>> model = sgf.GeneformerModel.from_pretrained("Geneformer-V1-10M", adata)  # doctest: +SKIP
        >>> report = model.train_classifier(max_epochs=5, freeze_layers=2)  # doctest: +SKIP
        """
        task = CellClassificationTask(
            labels_key=labels_key if labels_key is None or isinstance(labels_key, str) else list(labels_key),
            loss_weights=None if loss_weights is None else list(loss_weights),
            test_cells=test_cells,
            freeze_layers=freeze_layers,
            freeze_embeddings=freeze_embeddings,
            pooling=pooling,
            dropout=dropout,
            group_key=group_key,
            train_size=train_size,
            validation_size=validation_size,
            early_stopping_patience=early_stopping_patience,
        )
        report = self._fit(
            task, max_epochs=max_epochs, seed=seed, plan_kwargs=plan_kwargs, execution=execution, **trainer_kwargs
        )
        self.classification_report_ = report
        return report

    def train_gene_classifier(
        self,
        gene_labels: Mapping[str, Sequence[str]] | str | GeneLabels,
        *,
        max_epochs: int = 1,
        dropout: float = 0.1,
        freeze_layers: int = 0,
        freeze_embeddings: bool = False,
        validation_size: float = 0.1,
        n_cells: int | None = None,
        seed: int = 0,
        plan_kwargs: dict | None = None,
        execution: Execution | Mapping | None = None,
        **trainer_kwargs,
    ) -> None:
        """Fine-tune the model to classify genes (token classification) on the model's data.

        A gene-classification head (dropout and a linear layer) reads the last-layer hidden state of every gene
        token. The model trains on the encoded cells that hold at least one labelled gene; the loss is the
        cross-entropy of the labelled genes' classes at their positions (other genes and special tokens are
        unlabelled). Of those cells, ``validation_size`` are held out to log the validation loss and gene accuracy.
        Predict with :meth:`predict_genes` or :func:`scgeneformer.tl.classify_genes`; estimate how well genes of
        unseen labels are classified with :func:`scgeneformer.tl.gene_classification_cv`.

        Parameters
        ----------
        gene_labels
            ``{class: [genes]}``, genes named as in ``var_names`` or in the ``gene_id_key`` column used by
            :func:`~scgeneformer.pp.rank_encode` (Ensembl IDs with or without version suffix, any case); the
            name of a ``.var`` column holding each gene's class (missing values: unlabelled); or
            :class:`~scgeneformer.model.GeneLabels` already resolved on these data.
        max_epochs
            Passes over the training cells (the reference trains gene classifiers for one epoch).
        dropout, freeze_layers, freeze_embeddings
            As in :meth:`train_classifier`.
        validation_size
            Share of the cells held out for validation.
        n_cells
            Use a random subset of at most this many of the cells holding labelled genes (all by default).
        seed, plan_kwargs, execution, **trainer_kwargs
            As in :meth:`train`.

        Examples
        --------
        >>> labels = {"sensitive": ["GATA4", "TBX5"], "insensitive": ["CEBPZ", "RBBP5"]}
        >>> model.train_gene_classifier(labels)  # doctest: +SKIP
        """
        task = GeneClassificationTask(
            freeze_layers=freeze_layers,
            freeze_embeddings=freeze_embeddings,
            gene_labels=gene_labels,
            dropout=dropout,
            validation_size=validation_size,
            n_cells=n_cells,
        )
        self._fit(
            task, max_epochs=max_epochs, seed=seed, plan_kwargs=plan_kwargs, execution=execution, **trainer_kwargs
        )

    def _fit(
        self,
        task: TrainingTask,
        *,
        max_epochs: int,
        seed: int,
        plan_kwargs: dict | None,
        execution: Execution | Mapping | None,
        **trainer_kwargs,
    ) -> Any:
        """Train ``task`` on the model's data through scvi-tools' TrainRunner (Lightning); returns the task's report.

        Every check runs first; the model changes only once the task's head is installed.
        """
        from ._datamodule import TokenCollator, TokenDataModule

        if self.module.quantized:
            msg = (
                "A quantized model is for inference: fine-tune the full-precision model (with `add_lora()` to train "
                "few parameters), save it, and quantize the result for inference."
            )
            raise ValueError(msg)
        if self.training_data is None:
            msg = (
                "This model has no training data: create it with encoded data, e.g. "
                "`GeneformerModel.from_pretrained(name, adata)` or `model.copy(adata)`."
            )
            raise ValueError(msg)
        info = self.encoding_info()
        plan_kwargs = check_plan_kwargs(plan_kwargs)
        execution = Execution.coerce(execution)
        task.validate(self)
        prepared = task.prepare(self, info, seed)

        # -- from here on the model changes -------------------------------------------------------------------
        torch.manual_seed(seed)
        task.install(self)
        task.set_trainable(self.module)
        collator = TokenCollator(info, vocab_size=self.module.config.vocab_size, seed=seed, **prepared.targets)
        data = TokenDataModule(
            info,
            collator=collator,
            split=prepared.split,
            token_budget=execution.token_budget_for(training=True),
            max_cells=execution.batch_size,
            seed=seed,
            num_workers=execution.num_workers,
        )
        plan = task.make_plan(self.module, plan_kwargs)
        trainer_kwargs["callbacks"] = [*trainer_kwargs.get("callbacks", []), *task.callbacks(prepared)]
        trainer_kwargs.setdefault("gradient_clip_val", 1.0)
        defaults = trainer_defaults(len(data.train_dataloader().batch_sampler))
        defaults["enable_progress_bar"] = execution.show_progress  # explicit trainer arguments still win
        trainer_kwargs = defaults | trainer_kwargs
        if data.n_val:
            trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
        was_trained, was_training = self.is_trained_, self.module.training
        if not self.history_:
            # scvi-tools extends an existing history only; a model's first training records a fresh one
            self.is_trained_ = False
        self.module.train()  # dropout on while fitting, as in the reference's Trainer
        try:
            # The batch sampler splits batches across processes itself: Lightning must not inject a sampler.
            with lightning_run():
                train_runner(
                    self,
                    training_plan=plan,
                    data_splitter=data,
                    max_epochs=max_epochs,
                    use_distributed_sampler=False,
                    **execution.trainer_kwargs(),
                    **trainer_kwargs,
                )()
        except BaseException:
            self.is_trained_ = was_trained
            raise
        finally:
            plan.on_fit_end()  # restores attention dropout also when the run stopped with an error (idempotent)
            self.module.train(was_training)
        self.checkpoint = f"{self.checkpoint} + {task.stage}" if self.checkpoint else task.stage
        # Saved with the model, so that a loaded model still says where its weights came from.
        self.init_params_["non_kwargs"]["checkpoint"] = self.checkpoint
        self._model_summary_string = self._summary()
        return task.finish(self, plan, info, prepared, execution)

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
