"""Saving, loading and copying :class:`~scgeneformer.GeneformerModel`: the model's side of its saved folder.

The folder's format is :mod:`._model_folder`'s (weights and ``model.json``) and :mod:`._card`'s (``README.md``); this
mixin gathers what they record from the model and rebuilds a model from what they read.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import TYPE_CHECKING, Self

import torch

from .._data._corpus import Corpus
from ._card import CARD_FILE, CardFacts, model_card
from ._model_folder import Companion, ModelRecord, read_model_folder, write_model_folder

if TYPE_CHECKING:
    from anndata import AnnData


class SaveLoadMixin:
    """:meth:`save`, :meth:`load` and :meth:`copy` of a :class:`~scgeneformer.GeneformerModel`."""

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
        run code when loaded (see the "Data safety" page). Processes saving into one folder at the same time take
        turns (the folder is locked), and the folder always loads. Only files that scgeneformer wrote there are
        ever replaced or deleted: a folder holding anything else is refused unless ``overwrite=True``, and then its
        files are left as they are (a ``README.md`` that is not a model card of ours is kept, and no card is
        written). The model card, ``README.md``, records the base
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
            Replace a model saved there before (the files its save wrote, as its ``model.json`` records them, are
            replaced or deleted), or save into a folder that holds other files (they are left as they are).
        save_anndata
            Also write the model's data as ``adata.h5ad`` (``mdata.h5mu`` for MuData).
        **anndata_write_kwargs
            Arguments of ``write_h5ad``.

        Examples
        --------
        >>> model.save("my_classifier")  # doctest: +SKIP
        """
        prefix = prefix or ""
        record = ModelRecord(
            init_params=self.init_params_["non_kwargs"],
            setup_args=self.registry_.get("setup_args", {}) if self.adata is not None else None,
            is_trained=self.is_trained_,
            history=self.history_,
            classification_report=getattr(self, "classification_report_", None),
        )
        card = model_card(self._card_facts())
        companions = [Companion(CARD_FILE, lambda path: path.write_text(card, encoding="utf-8"), required=False)]
        if save_anndata and self.adata is not None:
            name = "mdata.h5mu" if type(self.adata).__name__ == "MuData" else "adata.h5ad"
            companions.append(Companion(name, lambda path: self.adata.write(path, **anndata_write_kwargs)))
        write_model_folder(dir_path, self.module, record, overwrite=overwrite, prefix=prefix, companions=companions)

    def _card_facts(self) -> CardFacts:
        """What the model card records of this model."""
        config = self.module.config
        training_data = None
        if self.adata is not None:
            setup = self.registry_.get("setup_args", {})
            splits = {
                name: None if getattr(self, attribute, None) is None else len(getattr(self, attribute))
                for name, attribute in (
                    ("n_train", "train_indices"),
                    ("n_validation", "validation_indices"),
                    ("n_test", "test_indices"),
                )
            }
            training_data = {
                "n_cells": int(self.adata.n_obs),
                "encoding_key": setup.get("encoding_key"),
                "labels_key": setup.get("labels_key"),
                **splits,
            }
        report = getattr(self, "classification_report_", None)
        metrics = None if report is None else {k: report[k] for k in ("accuracy", "macro_f1", "n_cells") if k in report}
        return CardFacts(
            checkpoint=self.checkpoint,
            vocabulary=self.vocabulary_version,
            architecture={
                "layers": config.num_hidden_layers,
                "hidden_size": config.hidden_size,
                "heads": config.num_attention_heads,
                "input_size": config.max_position_embeddings,
            },
            classes=self.classes,
            gene_classes=self.gene_classes,
            lora=None if self.lora_settings is None else self.lora_settings.to_params(),
            training_data=training_data,
            metrics=metrics,
        )

    @classmethod
    def load(cls, dir_path: str | os.PathLike, adata: AnnData | None = None, *, prefix: str | None = None) -> Self:
        """Load a model saved with :meth:`save`, on the CPU; set up on ``adata`` when given.

        Only JSON and safetensors are read (pickled ``model.pt`` files are refused: loading them could run code),
        and only the weights file that ``model.json``'s sha256 names, in the folder itself (symbolic links, as in
        the Hugging Face cache, are followed). A folder saved with ``save_anndata=True`` brings its data back too.
        Corrupted or incomplete folders, and Hugging Face folders (load those with :meth:`from_pretrained`), give a
        clear error.

        Examples
        --------
        >>> model.save("my_classifier")  # doctest: +SKIP
        >>> model = sgf.GeneformerModel.load("my_classifier")  # doctest: +SKIP
        """
        prefix = prefix or ""
        folder = Path(dir_path)
        saved = read_model_folder(folder, prefix)

        def saved_with(name: str) -> bool:  # data the save wrote (any file of that name, in older folders)
            file = folder / f"{prefix}{name}"
            return file.is_file() and (saved.files is None or file.name in saved.files)

        if adata is None and saved_with("adata.h5ad"):
            import anndata

            adata = anndata.read_h5ad(folder / f"{prefix}adata.h5ad")
        elif adata is None and saved_with("mdata.h5mu"):
            import mudata

            adata = mudata.read_h5mu(folder / f"{prefix}mdata.h5mu")
        record = saved.record
        if adata is not None and not isinstance(adata, Corpus) and record.setup_args is not None:
            cls.setup_anndata(adata, **record.setup_args)
        model = cls(adata, **record.init_params)
        saved.load_into(model.module)
        model.module.eval()
        model.checkpoint = record.init_params.get("checkpoint")
        model.is_trained_ = record.is_trained
        model.history_ = record.history
        if record.classification_report is not None:
            model.classification_report_ = record.classification_report
        return model

    def copy(self, adata: AnnData | Corpus | None = None, *, encoding_key: str | None = None) -> Self:
        """An independent copy of the model (weights, heads, vocabulary), set up on ``adata`` or on no data.

        ``adata`` may be a corpus larger than memory (:func:`~scgeneformer.read_corpus`).

        Fine-tuning the copy leaves this model unchanged, e.g. to fine-tune one copy per cross-validation fold.
        ``adata`` not yet registered with :meth:`setup_anndata` (with ``encoding_key``, when given) is registered.

        Examples
        --------
        >>> fold_model = model.copy(adata)  # doctest: +SKIP
        """
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
        return clone
