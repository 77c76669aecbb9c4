"""The network Geneformer runs: a Hugging Face ``BertForMaskedLM`` with optional classification heads (torch only).

Inference needs nothing more; :mod:`._module` wraps it in scvi-tools' module class for training. Kept free of
scvi-tools and Lightning so that loading a model and embedding cells imports neither (see the start-up benchmark).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .._compute._engine import gene_token_mask


def _key_padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """A 4-D key mask for SDPA, built once per batch instead of once per layer.

    On CPU in float32 an additive float mask is ~15% faster than the boolean one transformers derives from a 2-D
    mask (no per-layer conversion inside the attention kernel); elsewhere (autocast, GPU kernels) a boolean mask.
    """
    if attention_mask is None or attention_mask.dim() != 2:
        return attention_mask
    keep = attention_mask.bool()[:, None, None, :]
    if attention_mask.device.type == "cpu" and not torch.is_autocast_enabled("cpu"):
        additive = torch.zeros(keep.shape, dtype=torch.float32)
        return additive.masked_fill_(~keep, float("-inf"))
    return keep


class GeneformerNetwork(torch.nn.Module):
    """Geneformer's BERT encoder and masked-gene head, with optional cell- and gene-classification heads.

    The network that inference runs (embeddings, classification, perturbation): a plain torch module that needs
    torch and transformers only. :class:`~scgeneformer.model.GeneformerModule` adds scvi-tools' training interface
    (losses) on top of it; both hold the same weights under the same names.

    Parameters
    ----------
    bert_config
        Keyword arguments of :class:`transformers.BertConfig` (the checkpoint's ``config.json``).
    n_classes
        Size of a cell-classification head on the pooled last-layer embedding (``None``: no head), or
        ``{task: size}`` for one head per task on a shared encoder (multitask classification).
    classifier_pooling
        The embedding the cell-classification heads read: ``"mean"`` over gene tokens, ``"cls"`` (V2), or
        ``"pooler"``: BERT's pooler (a dense layer and tanh on the first token), as Hugging Face's
        ``BertForSequenceClassification`` and the reference's fine-tuned classifiers use.
    classifier_dropout
        Dropout before the linear layer of each classification head.
    special_tokens
        Whether cells are wrapped in ``<cls>`` … ``<eos>`` (V2), which mean pooling leaves out.
    n_gene_classes
        Size of a gene-classification (token-classification) head on the last-layer hidden state of each gene
        token (``None``: no head).

    Examples
    --------
    >>> hidden = model.module.encode(input_ids, attention_mask, n_layers=5)  # doctest: +SKIP
    """

    def __init__(
        self,
        bert_config: dict,
        n_classes: int | dict[str, int] | None = None,
        classifier_pooling: str = "mean",
        classifier_dropout: float = 0.1,
        special_tokens: bool = False,
        n_gene_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.special_tokens = special_tokens
        from transformers import BertConfig, BertForMaskedLM

        config = BertConfig(**{k: v for k, v in bert_config.items() if k != "architectures"})
        # SDPA attention: several times faster than eager on CPU, flash kernels on GPU.
        config._attn_implementation = "sdpa"
        self.mlm = BertForMaskedLM(config)
        self.classifier_pooling = classifier_pooling
        self.classifier = None
        if isinstance(n_classes, dict):
            self.classifier = torch.nn.ModuleDict(
                {task: classification_head(config.hidden_size, n, classifier_dropout) for task, n in n_classes.items()}
            )
        elif n_classes is not None:
            self.classifier = classification_head(config.hidden_size, n_classes, classifier_dropout)
        self.pooler = None
        if classifier_pooling == "pooler":
            from transformers.models.bert.modeling_bert import BertPooler

            self.pooler = BertPooler(config)
        self.gene_classifier = None
        if n_gene_classes is not None:
            self.gene_classifier = classification_head(config.hidden_size, n_gene_classes, classifier_dropout)

    @property
    def config(self):
        """The :class:`transformers.BertConfig`."""
        return self.mlm.config

    @property
    def quantized(self) -> bool:
        """Whether the encoder was loaded in 8 or 4 bits (it then stays on its GPU)."""
        return bool(getattr(self.mlm, "is_quantized", False))

    @property
    def multitask(self) -> bool:
        """Whether the cell classifier has one head per task."""
        return isinstance(self.classifier, torch.nn.ModuleDict)

    @property
    def n_layers(self) -> int:
        """Number of encoder layers."""
        return self.config.num_hidden_layers

    def hidden_state_index(self, layer: int) -> int:
        """Index into the ``n_layers + 1`` hidden states (0 = embedding layer output) that ``layer`` selects.

        ``layer <= 0`` follows the reference's ``emb_layer``: ``0`` is the last encoder layer, ``-1`` the second to
        last, ``-k`` hidden state ``n_layers - k``. ``layer > 0`` is an explicit 1-based encoder layer number.
        """
        index = self.n_layers + layer if layer <= 0 else layer
        if not 0 <= index <= self.n_layers:
            msg = (
                f"layer {layer} does not exist in a model with {self.n_layers} encoder layers "
                f"(use -{self.n_layers}..{self.n_layers})."
            )
            raise ValueError(msg)
        return index

    @contextmanager
    def _first_layers(self, n_layers: int):
        # Run only the layers needed: the encoder iterates over its ModuleList, so shorten it for the call.
        encoder = self.mlm.bert.encoder
        all_layers = encoder.layer
        encoder.layer = torch.nn.ModuleList(list(all_layers)[:n_layers])
        try:
            yield
        finally:
            encoder.layer = all_layers

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, n_layers: int | None = None):
        """Hidden states after the first ``n_layers`` encoder layers (all by default), without the MLM head.

        ``attention_mask=None`` means no padding: SDPA then runs without a mask, its fastest path.
        """
        n_layers = self.n_layers if n_layers is None else n_layers
        if not 0 <= n_layers <= self.n_layers:
            msg = f"n_layers must be between 0 and {self.n_layers}, got {n_layers}."
            raise ValueError(msg)
        with self._first_layers(n_layers):
            return self.mlm.bert(
                input_ids=input_ids, attention_mask=_key_padding_mask(attention_mask)
            ).last_hidden_state

    def pool(self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, pooling: str):
        """Cell embedding: ``"mean"``, ``"cls"`` or ``"pooler"`` (see the class description).

        The mean leaves out ``<cls>``, ``<eos>`` and padding; the pooler reads the first token.
        """
        if pooling == "cls":
            return hidden[:, 0]
        if pooling == "pooler":
            if self.pooler is None:
                msg = "pooling='pooler' needs BERT's pooler layer, which this model does not have."
                raise ValueError(msg)
            return self.pooler(hidden)
        genes = gene_token_mask(input_ids, attention_mask, has_special_tokens=self.special_tokens)
        weights = genes.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)

    def classify(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor | dict:
        """Class logits of the cell-classification head (``{task: logits}`` for a multitask classifier)."""
        if self.classifier is None:
            msg = "The model has no classification head; fine-tune it with `train_classifier` first."
            raise ValueError(msg)
        hidden = self.encode(input_ids, attention_mask)
        return self._heads(self.pool(hidden, input_ids, attention_mask, self.classifier_pooling))

    def _heads(self, pooled: torch.Tensor) -> torch.Tensor | dict:
        if self.multitask:
            return {task: head(pooled) for task, head in self.classifier.items()}
        return self.classifier(pooled)

    def classify_genes(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Gene-class logits of every token, shape ``(cells, tokens, classes)``, from the gene-classification head."""
        if self.gene_classifier is None:
            msg = "The model has no gene-classification head; fine-tune it with `train_gene_classifier` first."
            raise ValueError(msg)
        return self.gene_classifier(self.encode(input_ids, attention_mask))


def classification_head(hidden_size: int, n_classes: int, dropout: float = 0.1) -> torch.nn.Module:
    """The head of every classification task: dropout and a linear layer from a hidden state to class logits.

    Cell classification applies it to the pooled cell embedding, gene classification to each gene token's state.
    """
    return torch.nn.Sequential(torch.nn.Dropout(dropout), torch.nn.Linear(hidden_size, n_classes))


def network_arguments(
    bert_config: dict,
    vocabulary: str | None,
    classes: list[str] | dict[str, list[str]] | None = None,
    classifier_pooling: str = "mean",
    gene_classes: list[str] | None = None,
) -> tuple[str, dict]:
    """The vocabulary (checked, or told from ``vocab_size``) and the network's arguments for a model's parameters.

    The parameters are those a :class:`~scgeneformer.GeneformerModel` is created with (and saves in ``model.json``).
    """
    from ._hf_folder import VOCABULARY_BY_SIZE

    vocabulary = vocabulary or VOCABULARY_BY_SIZE.get(int(bert_config["vocab_size"]))
    if vocabulary not in ("V1", "V2"):
        msg = "Cannot tell the model's vocabulary from its vocab_size; pass vocabulary='V1' or 'V2'."
        raise ValueError(msg)
    if isinstance(classes, dict):
        n_classes = {task: len(names) for task, names in classes.items()}
    else:
        n_classes = None if classes is None else len(classes)
    arguments = {
        "bert_config": bert_config,
        "n_classes": n_classes,
        "classifier_pooling": classifier_pooling,
        "special_tokens": vocabulary == "V2",
        "n_gene_classes": None if gene_classes is None else len(gene_classes),
    }
    return vocabulary, arguments
