import numpy as np
import pytest
import torch
from helpers import encoded_counts, make_vocabulary, tiny_bert_config

import scgeneformer as sgf
from scgeneformer._compute._batching import LengthGroupedBatchSampler
from scgeneformer.model._datamodule import mask_genes


def test_masking_rules():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 1000, (64, 300))
    ids[:, 0], ids[:, 250] = 2, 3  # <cls> ... <eos>
    mask = torch.ones_like(ids)
    mask[:, 251:] = 0
    ids[:, 251:] = 0
    corrupted, labels = mask_genes(
        ids, mask, gene_token_start=4, vocab_size=1000, mask_id=1, probability=0.15, generator=generator
    )
    selected = labels != -100
    genes = (ids >= 4) & mask.bool()
    assert not selected[~genes].any()  # special tokens and padding are never selected
    assert abs(selected.sum().item() / genes.sum().item() - 0.15) < 0.01
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(corrupted[~selected], ids[~selected])
    masked = (corrupted == 1) & selected
    kept = (corrupted == ids) & selected
    n = selected.sum().item()
    assert abs(masked.sum().item() / n - 0.8) < 0.03
    assert abs(kept.sum().item() / n - 0.1) < 0.03  # random replacements can hit the same id, rarely
    assert (corrupted[selected & ~masked & ~kept] >= 4).all()  # random replacements are genes


def test_length_grouped_batches_cover_every_cell_once():
    lengths = np.random.default_rng(0).integers(10, 500, 1000)
    sampler = LengthGroupedBatchSampler(np.arange(1000), lengths, token_budget=4000, seed=1)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert all(len(b) * lengths[b].max() <= 4000 or len(b) == 1 for b in batches)
    padding = sum(len(b) * lengths[b].max() - lengths[b].sum() for b in batches) / lengths.sum()
    assert padding < 0.15
    sampler.set_epoch(1)
    assert [list(b) for b in sampler] != [list(b) for b in batches]


@pytest.mark.slow
def test_pretraining_lowers_held_out_masked_loss():
    vocab = make_vocabulary("V2")
    adata = encoded_counts(vocab, n_obs=80, n_vars=60)  # few genes: learnable within a few epochs
    sgf.GeneformerModel.setup_anndata(adata)
    torch.manual_seed(0)
    model = sgf.GeneformerModel(adata, bert_config=tiny_bert_config(vocab), vocabulary="V2")
    model.train(
        max_epochs=8,
        plan_kwargs={"lr": 3e-3, "warmup_steps": 0},
        execution={"accelerator": "cpu"},
        enable_progress_bar=False,
    )
    validation = model.history_["validation_loss"].to_numpy().ravel()
    assert validation[-1] < validation[0] - 0.5
    assert model.is_trained_ and not model.module.training
    assert len(model.validation_indices) == 8 and len(model.train_indices) == 72
