"""Training methods of :class:`~scgeneformer.GeneformerModel`: masked-gene pretraining and fine-tuning.

:meth:`TrainingMixin.train`, :meth:`~TrainingMixin.train_classifier` and :meth:`~TrainingMixin.train_gene_classifier`
each describe a task (:mod:`._tasks`); ``_fit`` runs every task the same way through scvi-tools' ``TrainRunner``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._compute._execution import Execution
from .._compute._lightning import lightning_run, trainer_defaults
from ._datamodule import TokenCollator, TokenDataModule
from ._plans import check_plan_kwargs, train_runner
from ._tasks import CellClassificationTask, GeneClassificationTask, MaskedGeneTask, TrainingTask

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ._gene_classifier import GeneLabels


class TrainingMixin:
    """Training methods of a :class:`~scgeneformer.GeneformerModel`."""

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
        return task.finish(self, plan, info, prepared, execution)

    def trainable_parameters(self) -> tuple[int, int]:
        """``(trainable, total)`` parameter counts as the next training would set them (with the current heads).

        Examples
        --------
        >>> model.add_lora(r=8)  # doctest: +SKIP
        >>> trainable, total = model.trainable_parameters()  # doctest: +SKIP
        """
        parameters = list(self.module.parameters())
        flags = [p.requires_grad for p in parameters]
        TrainingTask().set_trainable(self.module)  # LoRA-aware: adapters and heads only when adapters exist
        trainable = sum(p.numel() for p in parameters if p.requires_grad)
        for p, flag in zip(parameters, flags, strict=True):
            p.requires_grad = flag
        return trainable, sum(p.numel() for p in parameters)
