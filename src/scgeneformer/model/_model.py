"""``sgf.GeneformerModel``: Geneformer as a scvi-tools model."""

from __future__ import annotations

import copy
import logging
import math
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LayerField, NumericalObsField
from scvi.model.base import BaseModelClass

from ..pp._rank_encode import encoding_keys
from ._checkpoints import get_checkpoint
from ._module import GeneformerModule

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from anndata import AnnData

    from ..pp._input_ids import EncodingInfo
    from ._gene_classifier import GeneLabels

#: Vocabulary sizes of the two Geneformer vocabularies, used to recognise a checkpoint's vocabulary.
VOCABULARY_BY_SIZE = {25_426: "V1", 20_275: "V2"}
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class GeneformerModel(BaseModelClass):
    """Geneformer: a BERT encoder over rank-value encoded transcriptomes.

    Create one from a published checkpoint or a local Hugging Face folder with :meth:`from_pretrained`, or a fresh
    (randomly initialised) model from a BERT configuration. The model does not need to be set up on the data it
    embeds: :func:`scgeneformer.tl.embed` reads any AnnData encoded by :func:`scgeneformer.pp.rank_encode` with the
    model's vocabulary. :meth:`setup_anndata` registers data for training.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`, or ``None`` for a model without data.
    registry
        Registry of a saved model (used by :meth:`load`).
    bert_config
        Keyword arguments of :class:`transformers.BertConfig` (a checkpoint's ``config.json``).
    vocabulary
        ``"V1"`` or ``"V2"``: the vocabulary the model's tokens come from. Inferred from ``vocab_size`` if omitted.
    checkpoint
        Name or path of the checkpoint the weights came from (informational).
    classes
        Class names of a cell-classification head (set by :meth:`train_classifier`).
    classifier_pooling
        ``"mean"`` or ``"cls"``: the pooled embedding the classification head reads.
    gene_classes
        Class names of a gene-classification head (set by :meth:`train_gene_classifier`).
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
        classes: list[str] | None = None,
        classifier_pooling: str = "mean",
        gene_classes: list[str] | None = None,
    ) -> None:
        if adata is None and registry is None:
            registry = _data_free_registry(type(self).__name__)
        super().__init__(adata, registry)
        vocabulary = vocabulary or VOCABULARY_BY_SIZE.get(int(bert_config["vocab_size"]))
        if vocabulary not in ("V1", "V2"):
            msg = "Cannot tell the model's vocabulary from its vocab_size; pass vocabulary='V1' or 'V2'."
            raise ValueError(msg)
        self.module = GeneformerModule(
            bert_config,
            n_classes=None if classes is None else len(classes),
            classifier_pooling=classifier_pooling,
            special_tokens=vocabulary == "V2",
            n_gene_classes=None if gene_classes is None else len(gene_classes),
        )
        self.classes = None if classes is None else list(classes)
        self.gene_classes = None if gene_classes is None else list(gene_classes)
        self.vocabulary_version = vocabulary
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
        """
        from ..pp._input_ids import EncodingInfo

        EncodingInfo(adata, encoding_key)  # raises if the data are not encoded
        keys = encoding_keys(encoding_key)
        setup_method_args = cls._get_setup_method_args(**locals())
        fields = [
            LayerField("X", keys["ranks"], is_count_data=False),
            NumericalObsField("length", keys["n_tokens"]),
        ]
        if labels_key is not None:
            fields.append(CategoricalObsField("labels", labels_key))
        if batch_key is not None:
            fields.append(CategoricalObsField("batch", batch_key))
        manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        manager.register_fields(adata, **kwargs)
        cls.register_manager(manager)

    def check_encoding(self, info: EncodingInfo) -> None:
        """Raise if data were encoded with another vocabulary than the model's."""
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
    ) -> GeneformerModel:
        """Load published weights by name (see :func:`scgeneformer.list_models`) or a local Hugging Face folder.

        Published weights are downloaded once into ``sgf.settings.cache_dir`` and checked against their sha256. A
        local folder holds ``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``.

        Parameters
        ----------
        name_or_path
            A checkpoint name or alias (e.g. ``"Geneformer-V1-10M"``, ``"V2-104M"``) or a folder.
        adata
            Optional AnnData registered with :meth:`setup_anndata`.
        vocabulary
            ``"V1"``/``"V2"``; needed only for a local folder whose ``vocab_size`` is not a Geneformer one.
        """
        checkpoint = get_checkpoint(str(name_or_path))
        if checkpoint is not None:
            folder = checkpoint.local_folder()
            vocabulary = vocabulary or checkpoint.vocabulary
            label = checkpoint.name
        else:
            folder = Path(name_or_path).expanduser()
            if not (folder / "config.json").is_file():
                msg = (
                    f"{name_or_path!r} is neither a published checkpoint (see `sgf.list_models()`) nor a folder "
                    "with config.json and model.safetensors or pytorch_model.bin."
                )
                raise FileNotFoundError(msg)
            label = str(folder)
        hf_model = _load_hf_weights(folder)
        bert_config = _plain_config(hf_model.config)
        with torch.device("meta"):  # skip the random initialisation that the weights replace anyway
            model = cls(adata, bert_config=bert_config, vocabulary=vocabulary, checkpoint=label)
        model.module.mlm = hf_model
        model.module.eval()
        return model

    @classmethod
    def load(cls, dir_path: str, adata: AnnData | None = None, **kwargs) -> GeneformerModel:
        """Load a model saved with :meth:`save`; a corrupted or truncated file gives a clear error."""
        path = Path(dir_path)
        scvi_logger = logging.getLogger("scvi")
        level = scvi_logger.level
        # scvi-tools logs "File <path>/model.pt already downloaded" at INFO on every load: noise, not news.
        scvi_logger.setLevel(max(level, logging.WARNING))
        try:
            with warnings.catch_warnings():
                # A foundation model is applied to data with other genes than it was saved with: expected.
                warnings.filterwarnings("ignore", message=".*var_names for adata passed in does not match.*")
                warnings.filterwarnings("ignore", message=".*Model will be loaded without anndata.*")
                return super().load(str(path), adata=adata, **kwargs)
        except FileNotFoundError:
            raise
        except Exception as e:
            msg = f"Could not load a GeneformerModel from {path}: the saved file is corrupted or truncated ({e})."
            raise ValueError(msg) from e
        finally:
            scvi_logger.setLevel(level)

    # -- training ------------------------------------------------------------------------------------------------
    def train(
        self,
        max_epochs: int = 1,
        *,
        mlm_probability: float = 0.15,
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        warmup_steps: int | float = 0.05,
        schedule: str = "linear",
        gradient_clip_val: float | None = 1.0,
        token_budget: int = 16_384,
        max_cells: int | None = None,
        train_size: float = 0.9,
        validation_size: float | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        strategy: str = "auto",
        precision: str | None = None,
        checkpoint_dir: str | None = None,
        ckpt_path: str | None = None,
        seed: int = 0,
        **trainer_kwargs,
    ) -> None:
        """Masked-gene pretraining (or continued pretraining of a published checkpoint) on the registered data.

        Of each cell's gene tokens, ``mlm_probability`` are selected (special tokens and padding never); 80% of those
        become ``<mask>``, 10% a random gene, 10% stay, and the loss is the cross-entropy of the selected genes,
        computed only at those positions. Batches hold cells of similar length under ``token_budget`` padded tokens
        and are padded only to their longest cell.

        Parameters
        ----------
        max_epochs
            Passes over the training cells.
        mlm_probability
            Share of gene tokens selected for prediction.
        lr, weight_decay, warmup_steps, schedule
            AdamW and learning-rate schedule (see :class:`~scgeneformer.model.GeneformerTrainingPlan`).
        gradient_clip_val
            Gradient norm clipping (``None`` to disable).
        token_budget, max_cells
            Batch size, in padded tokens (and optionally cells).
        train_size, validation_size
            Shares of encoded cells used for training and validation (the rest is the test set). Validation loss
            and masked-gene accuracy are logged each epoch when there are validation cells.
        accelerator, devices, strategy, precision
            Passed to Lightning, e.g. ``accelerator="gpu", devices=4, strategy="ddp", precision="bf16-mixed"``.
        checkpoint_dir
            Save a Lightning checkpoint at the end of every epoch here.
        ckpt_path
            Resume training from this Lightning checkpoint.
        seed
            Seed of the split, the batch order, the masking and the initial weights of new layers.
        **trainer_kwargs
            Further :class:`lightning.pytorch.Trainer` arguments.
        """
        from ..pp._input_ids import EncodingInfo
        from ._data import TokenCollator, TokenDataModule
        from ._training import GeneformerTrainingPlan

        if self.adata is None:
            msg = "Register training data first: `GeneformerModel.setup_anndata(adata)`, then pass it to the model."
            raise ValueError(msg)
        encoding_key = self.registry_["setup_args"].get("encoding_key", "geneformer")
        info = EncodingInfo(self.adata, encoding_key)
        self.check_encoding(info)
        torch.manual_seed(seed)
        collator = TokenCollator(
            info, mlm_probability=mlm_probability, vocab_size=self.module.config.vocab_size, seed=seed
        )
        data = TokenDataModule(
            info,
            collator=collator,
            train_size=train_size,
            validation_size=validation_size,
            token_budget=token_budget,
            max_cells=max_cells,
            seed=seed,
        )
        plan = GeneformerTrainingPlan(
            self.module, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps, schedule=schedule
        )
        callbacks = list(trainer_kwargs.pop("callbacks", []))
        if checkpoint_dir is not None:
            from lightning.pytorch.callbacks import ModelCheckpoint

            callbacks.append(ModelCheckpoint(dirpath=checkpoint_dir, save_top_k=-1, every_n_epochs=1))
            trainer_kwargs["enable_checkpointing"] = True
        self._run_lightning(
            plan,
            data,
            "training",
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            precision=precision,
            gradient_clip_val=gradient_clip_val,
            callbacks=callbacks,
            ckpt_path=ckpt_path,
            **trainer_kwargs,
        )

    def train_classifier(
        self,
        max_epochs: int = 10,
        *,
        lr: float = 5e-5,
        weight_decay: float = 0.001,
        warmup_steps: int | float = 0.05,
        schedule: str = "linear",
        freeze_layers: int = 0,
        freeze_embeddings: bool = False,
        pooling: str | None = None,
        dropout: float = 0.1,
        group_key: str | None = None,
        train_size: float = 0.8,
        validation_size: float = 0.1,
        early_stopping_patience: int | None = 3,
        token_budget: int = 8_192,
        max_cells: int | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        strategy: str = "auto",
        precision: str | None = None,
        seed: int = 0,
        **trainer_kwargs,
    ) -> dict:
        """Fine-tune the model to classify cells by the ``labels_key`` registered with :meth:`setup_anndata`.

        A classification head (dropout and a linear layer) reads the pooled last-layer embedding. Cells are split
        into training, validation and test sets, stratified by label or, with ``group_key``, by whole groups (e.g.
        donors, so that no donor is in two sets). The weights of the epoch with the best validation macro-F1 are
        kept (training stops after ``early_stopping_patience`` epochs without improvement), then the test set is
        evaluated.

        Parameters
        ----------
        max_epochs
            Maximum passes over the training cells.
        lr, weight_decay, warmup_steps, schedule
            AdamW and learning-rate schedule.
        freeze_layers
            Freeze the first ``freeze_layers`` encoder layers (and, with ``freeze_embeddings``, the embeddings).
        pooling
            ``"mean"`` (default) or ``"cls"`` (V2 only): the embedding the head reads.
        dropout
            Dropout before the head.
        group_key
            ``.obs`` column whose groups are kept whole across the splits.
        train_size, validation_size
            Shares of labelled cells (or groups) for training and validation; the rest is the test set.
        early_stopping_patience
            Stop after this many epochs without a better validation macro-F1 (``None``: never).
        token_budget, max_cells, accelerator, devices, strategy, precision, seed, **trainer_kwargs
            As in :meth:`train`.

        Returns
        -------
        Test-set ``accuracy``, ``macro_f1``, ``confusion_matrix`` (rows: true, columns: predicted), ``classes``,
        ``n_cells`` and ``test_cells`` (their obs names, e.g. to evaluate or perturb only held-out cells); also
        stored in ``model.classification_report_`` with the validation history in ``history_``.
        """
        import pandas as pd

        from ..pp._input_ids import EncodingInfo
        from ._classifier import ClassifierTrainingPlan, classification_metrics, split_cells
        from ._data import TokenCollator, TokenDataModule

        setup = self.registry_["setup_args"]
        labels_key = setup.get("labels_key")
        if self.adata is None or labels_key is None:
            msg = "Register labelled data first: `GeneformerModel.setup_anndata(adata, labels_key=...)`."
            raise ValueError(msg)
        info = EncodingInfo(self.adata, setup.get("encoding_key", "geneformer"))
        self.check_encoding(info)
        labels = pd.Series(self.adata.obs[labels_key].to_numpy(dtype=object))
        usable = np.flatnonzero(labels.notna().to_numpy() & (info.lengths > 0))
        classes = sorted(map(str, pd.unique(labels.iloc[usable])))
        if len(classes) < 2:
            msg = f"obs[{labels_key!r}] needs at least two classes among encoded cells, found {classes}."
            raise ValueError(msg)
        codes = np.full(self.adata.n_obs, -1, dtype=np.int64)
        codes[usable] = pd.Categorical(labels.iloc[usable].astype(str), categories=classes).codes
        groups = None
        if group_key is not None:
            if group_key not in self.adata.obs.columns:
                msg = f"group_key {group_key!r} is not an .obs column."
                raise KeyError(msg)
            groups = self.adata.obs[group_key].astype(str).to_numpy()[usable]
        train, val, test = split_cells(
            codes[usable], groups=groups, train_size=train_size, validation_size=validation_size, seed=seed
        )
        split = (usable[train], usable[val], usable[test])
        pooling = pooling or self.module.classifier_pooling
        if pooling == "cls" and not self.module.special_tokens:
            msg = "pooling='cls' needs a V2 model; use pooling='mean'."
            raise ValueError(msg)
        torch.manual_seed(seed)
        config = self.module.config
        self.module.classifier = torch.nn.Sequential(
            torch.nn.Dropout(dropout), torch.nn.Linear(config.hidden_size, len(classes))
        )
        self.module.classifier_pooling = pooling
        self.classes = classes
        self.init_params_["non_kwargs"].update(classes=classes, classifier_pooling=pooling)
        self._freeze(freeze_layers, freeze_embeddings)

        collator = TokenCollator(info, mlm_probability=None, vocab_size=config.vocab_size, labels=codes, seed=seed)
        data = TokenDataModule(
            info, collator=collator, token_budget=token_budget, max_cells=max_cells, seed=seed, split=split
        )
        plan = ClassifierTrainingPlan(
            self.module,
            n_classes=len(classes),
            lr=lr,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            schedule=schedule,
        )
        callbacks = list(trainer_kwargs.pop("callbacks", []))
        if early_stopping_patience is not None and len(val):
            from lightning.pytorch.callbacks import EarlyStopping

            callbacks.append(EarlyStopping(monitor="validation_macro_f1", mode="max", patience=early_stopping_patience))
        self._run_lightning(
            plan,
            data,
            "classifier",
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            precision=precision,
            callbacks=callbacks,
            **trainer_kwargs,
        )
        if plan.best_state is not None:
            self.module.load_state_dict(plan.best_state)
        self.module.eval()
        predicted = self._predict_codes(info, split[2], token_budget)
        self.classification_report_ = classification_metrics(codes[split[2]], predicted, classes)
        self.classification_report_["test_cells"] = self.adata.obs_names[split[2]].to_numpy(dtype=str)
        return self.classification_report_

    def train_gene_classifier(
        self,
        gene_labels: Mapping[str, Sequence[str]] | str,
        *,
        max_epochs: int = 1,
        lr: float = 5e-5,
        weight_decay: float = 0.001,
        warmup_steps: int | float = 0.05,
        schedule: str = "linear",
        freeze_layers: int = 0,
        freeze_embeddings: bool = False,
        dropout: float = 0.1,
        validation_size: float = 0.1,
        n_cells: int | None = None,
        token_budget: int = 8_192,
        max_cells: int | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        strategy: str = "auto",
        precision: str | None = None,
        seed: int = 0,
        **trainer_kwargs,
    ) -> None:
        """Fine-tune the model to classify genes (token classification) on the registered data.

        A gene-classification head (dropout and a linear layer) reads the last-layer hidden state of every gene
        token. The model trains on the encoded cells that hold at least one labelled gene; the loss is the
        cross-entropy of the labelled genes' classes at their positions (other genes and special tokens are
        unlabelled). Of those cells, ``validation_size`` are held out to log the validation loss and gene accuracy.
        Predict with :func:`scgeneformer.tl.classify_genes`; estimate how well genes of unseen labels are classified
        with :func:`scgeneformer.tl.gene_classification_cv`.

        Parameters
        ----------
        gene_labels
            ``{class: [genes]}``, genes named as in ``var_names`` or in the ``gene_id_key`` column used by
            :func:`~scgeneformer.pp.rank_encode` (Ensembl IDs with or without version suffix, any case); or the
            name of a ``.var`` column holding each gene's class (missing values: unlabelled).
        max_epochs
            Passes over the training cells (the reference trains gene classifiers for one epoch).
        lr, weight_decay, warmup_steps, schedule
            AdamW and learning-rate schedule.
        freeze_layers, freeze_embeddings, dropout
            As in :meth:`train_classifier`.
        validation_size
            Share of the cells held out for validation.
        n_cells
            Use a random subset of at most this many of the cells holding labelled genes (all by default).
        token_budget, max_cells, accelerator, devices, strategy, precision, seed, **trainer_kwargs
            As in :meth:`train`.
        """
        from ..pp._input_ids import EncodingInfo
        from ._gene_classifier import resolve_gene_labels

        if self.adata is None:
            msg = "Register training data first: `GeneformerModel.setup_anndata(adata)`, then pass it to the model."
            raise ValueError(msg)
        info = EncodingInfo(self.adata, self.registry_["setup_args"].get("encoding_key", "geneformer"))
        self.check_encoding(info)
        labels = resolve_gene_labels(info, gene_labels)
        self._fit_gene_classifier(
            info,
            labels,
            max_epochs=max_epochs,
            lr=lr,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            schedule=schedule,
            freeze_layers=freeze_layers,
            freeze_embeddings=freeze_embeddings,
            dropout=dropout,
            validation_size=validation_size,
            n_cells=n_cells,
            token_budget=token_budget,
            max_cells=max_cells,
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            precision=precision,
            seed=seed,
            **trainer_kwargs,
        )

    def _fit_gene_classifier(
        self,
        info: EncodingInfo,
        labels: GeneLabels,
        genes: np.ndarray | None = None,
        *,
        max_epochs: int = 1,
        lr: float = 5e-5,
        weight_decay: float = 0.001,
        warmup_steps: int | float = 0.05,
        schedule: str = "linear",
        freeze_layers: int = 0,
        freeze_embeddings: bool = False,
        dropout: float = 0.1,
        validation_size: float = 0.1,
        n_cells: int | None = None,
        token_budget: int = 8_192,
        max_cells: int | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        strategy: str = "auto",
        precision: str | None = None,
        seed: int = 0,
        **trainer_kwargs,
    ) -> None:
        """Train a new gene-classification head on ``info``'s data, labelling only ``labels``' genes ``genes``."""
        from ._data import TokenCollator, TokenDataModule
        from ._gene_classifier import cells_with_tokens
        from ._module import gene_classification_head
        from ._training import GeneformerTrainingPlan

        genes = np.arange(len(labels.tokens)) if genes is None else np.asarray(genes)
        if not 0 <= validation_size < 1:
            msg = f"validation_size must be in [0, 1), got {validation_size}."
            raise ValueError(msg)
        rng = np.random.default_rng(seed)
        cells = rng.permutation(cells_with_tokens(info, labels.tokens[genes]))
        if n_cells is not None:
            cells = cells[:n_cells]
        n_val = math.floor(validation_size * len(cells) + 1e-9)
        if len(cells) - n_val < 1:
            msg = "No encoded cell holds a labelled gene to train on."
            raise ValueError(msg)
        split = (np.sort(cells[n_val:]), np.sort(cells[:n_val]), np.array([], dtype=np.int64))

        torch.manual_seed(seed)
        config = self.module.config
        self.module.gene_classifier = gene_classification_head(config.hidden_size, len(labels.classes), dropout)
        self.gene_classes = list(labels.classes)
        self.init_params_["non_kwargs"].update(gene_classes=self.gene_classes)
        self._freeze(freeze_layers, freeze_embeddings)

        collator = TokenCollator(
            info,
            mlm_probability=None,
            vocab_size=config.vocab_size,
            token_labels=labels.lookup(config.vocab_size, genes),
            seed=seed,
        )
        data = TokenDataModule(
            info, collator=collator, token_budget=token_budget, max_cells=max_cells, seed=seed, split=split
        )
        plan = GeneformerTrainingPlan(
            self.module, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps, schedule=schedule
        )
        self._run_lightning(
            plan,
            data,
            "gene classifier",
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            precision=precision,
            **trainer_kwargs,
        )

    def _run_lightning(self, plan, data, stage: str, *, precision: str | None = None, **trainer_kwargs) -> None:
        """Fit ``plan`` on ``data`` with scvi-tools' TrainRunner (Lightning), then record what was trained."""
        from scvi.train import TrainRunner

        if data.n_val:
            trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
        if precision is not None:
            trainer_kwargs["precision"] = precision
        # The batch sampler splits batches across DDP ranks itself, so Lightning must not inject a sampler.
        TrainRunner(self, training_plan=plan, data_splitter=data, use_distributed_sampler=False, **trainer_kwargs)()
        self.module.eval()
        self.checkpoint = f"{self.checkpoint} + {stage}" if self.checkpoint else stage
        # Saved with the model, so that a loaded model still says where its weights came from.
        self.init_params_["non_kwargs"]["checkpoint"] = self.checkpoint
        self._model_summary_string = self._summary()

    def _detached_copy(self) -> GeneformerModel:
        """A copy of the model (weights and heads) that is not set up on any data."""
        with torch.device("meta"):  # skip initialising weights that the copied module replaces
            clone = type(self)(**self.init_params_["non_kwargs"])
        clone.module = copy.deepcopy(self.module)
        clone.checkpoint = self.checkpoint
        clone.is_trained_ = self.is_trained_
        return clone

    def _freeze(self, n_layers: int, embeddings: bool) -> None:
        bert = self.module.mlm.bert
        for parameter in self.module.parameters():
            parameter.requires_grad = True
        in_encoder = {id(parameter) for parameter in bert.parameters()}
        for parameter in self.module.mlm.cls.parameters():
            # The masked-gene head plays no part in classification; its decoder shares the word embeddings' weight,
            # which stays trainable unless the embeddings are frozen.
            if id(parameter) not in in_encoder:
                parameter.requires_grad = False
        if embeddings:
            for parameter in bert.embeddings.parameters():
                parameter.requires_grad = False
        if not 0 <= n_layers <= len(bert.encoder.layer):
            msg = f"freeze_layers must be between 0 and {len(bert.encoder.layer)}."
            raise ValueError(msg)
        for layer in bert.encoder.layer[:n_layers]:
            for parameter in layer.parameters():
                parameter.requires_grad = False

    def _predict_codes(self, info, cells: np.ndarray, token_budget: int) -> np.ndarray:
        from ..tl._annotate import class_probabilities

        probabilities = class_probabilities(self, info, cells, token_budget=token_budget, progress_bar=False)
        return probabilities.argmax(1)

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


def _data_free_registry(model_name: str) -> dict:
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


def _load_hf_weights(folder: Path):
    from transformers import BertForMaskedLM
    from transformers.utils import logging as hf_logging

    if not any((folder / name).is_file() for name in _WEIGHT_FILES):
        msg = f"{folder} has no {' or '.join(_WEIGHT_FILES)}."
        raise FileNotFoundError(msg)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # classifier checkpoints: the unused head and missing MLM head are expected
    hf_logging.disable_progress_bar()
    try:
        return BertForMaskedLM.from_pretrained(folder, attn_implementation="sdpa")
    except Exception as e:  # safetensors, torch.load and transformers raise various types
        msg = (
            f"The weights in {folder} could not be read; the file is corrupted or truncated ({type(e).__name__}: {e})."
        )
        raise ValueError(msg) from e
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
        logging.getLogger("transformers").setLevel(logging.WARNING)


def _plain_config(config) -> dict:
    keys = (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "hidden_act",
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "max_position_embeddings",
        "type_vocab_size",
        "initializer_range",
        "layer_norm_eps",
        "pad_token_id",
        "position_embedding_type",
    )
    return {k: getattr(config, k) for k in keys if hasattr(config, k)}
