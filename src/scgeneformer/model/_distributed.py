"""Embedding inference across several processes or devices through Lightning (``Trainer.predict``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import lightning.pytorch as pl
import numpy as np
import torch

from .._engine import DEFAULT_TOKEN_BUDGET, gene_token_mask
from ._data import LengthGroupedBatchSampler, TokenCollator, _Positions

if TYPE_CHECKING:
    from ..pp._input_ids import EncodingInfo


class _EmbeddingPredictor(pl.LightningModule):
    def __init__(self, module, n_run: int, pooling: str, special: bool, gene_cells: np.ndarray | None) -> None:
        super().__init__()
        self.module = module
        self.n_run, self.pooling, self.special = n_run, pooling, special
        self.gene_cells = gene_cells
        self.outputs: list = []
        self.gene_sums = None

    def predict_step(self, batch, batch_idx):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        hidden = self.module.encode(ids, mask, self.n_run).float()
        pooled = self.module.pool(hidden, ids, mask, self.pooling)
        self.outputs.append((batch["cells"].cpu().numpy(), pooled.cpu().numpy()))
        if self.gene_cells is not None:
            config = self.module.config
            if self.gene_sums is None:
                self.gene_sums = (
                    torch.zeros((config.vocab_size, config.hidden_size), dtype=torch.float64),
                    torch.zeros(config.vocab_size, dtype=torch.int64),
                )
            genes = gene_token_mask(ids, mask, self.special)
            use = torch.as_tensor(self.gene_cells[batch["cells"].cpu().numpy()], device=ids.device)[:, None] & genes
            self.gene_sums[0].index_add_(0, ids[use].cpu(), hidden[use].double().cpu())
            self.gene_sums[1].index_add_(0, ids[use].cpu(), torch.ones(int(use.sum()), dtype=torch.int64))

    def on_predict_epoch_end(self) -> None:
        # Every rank ends up with every rank's results (gloo and NCCL both support object gathering).
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, (self.outputs, self.gene_sums))
            self.outputs = [item for outputs, _ in gathered for item in outputs]
            sums = [s for _, s in gathered if s is not None]
            if sums:
                self.gene_sums = (sum(s[0] for s in sums), sum(s[1] for s in sums))


def predict_embeddings(
    module,
    info: EncodingInfo,
    cells: np.ndarray,
    *,
    n_run: int,
    pooling: str,
    gene_cells: np.ndarray | None,
    token_budget: int | None,
    max_cells: int | None,
    accelerator: str,
    devices,
    strategy: str,
    precision: str | None,
    progress_bar: bool,
):
    """Like :func:`scgeneformer.tl._embed.compute_embeddings`, with batches spread over Lightning processes."""
    encoded = cells[info.lengths[cells] > 0]
    budget = token_budget or DEFAULT_TOKEN_BUDGET["cuda" if accelerator in ("gpu", "cuda") else "cpu"]
    sampler = LengthGroupedBatchSampler(
        encoded, info.lengths[encoded], token_budget=budget, max_cells=max_cells, shuffle=False, even_split=False
    )
    collator = TokenCollator(info, mlm_probability=None, vocab_size=module.config.vocab_size)
    loader = torch.utils.data.DataLoader(_Positions(info.adata.n_obs), batch_sampler=sampler, collate_fn=collator)
    predictor = _EmbeddingPredictor(module, n_run, pooling, info.n_special > 0, gene_cells)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        precision=precision or ("bf16-mixed" if accelerator in ("gpu", "cuda") else "32-true"),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    was_training = module.training
    module.eval()
    trainer.predict(predictor, dataloaders=loader, return_predictions=False)
    module.train(was_training)
    module.cpu()
    out = np.full((len(cells), module.config.hidden_size), np.nan, dtype=np.float32)
    row_of_cell = {int(c): i for i, c in enumerate(cells)}
    for batch_cells, pooled in predictor.outputs:
        out[[row_of_cell[int(c)] for c in batch_cells]] = pooled
    genes = None
    if gene_cells is not None:
        genes = (predictor.gene_sums[0].numpy(), predictor.gene_sums[1].numpy())
    return out, genes
