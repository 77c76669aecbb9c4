"""Two-process CPU DDP run (gloo), launched by ``test_distributed.py``; not a test module itself.

Lightning's ``ddp`` strategy starts the second process by re-running this script, so everything below runs in both
processes; rank 0 writes the results.
"""

import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
import torch
from helpers import encoded_counts, make_vocabulary, tiny_bert_config

import scgeneformer as sgf


def main(output: Path) -> None:
    warnings.simplefilter("ignore")
    vocab = make_vocabulary("V2")
    adata = encoded_counts(vocab, n_obs=40)
    sgf.GeneformerModel.setup_anndata(adata)
    torch.manual_seed(0)
    model = sgf.GeneformerModel(adata, bert_config=tiny_bert_config(vocab), vocabulary="V2")
    model.train(
        max_epochs=2,
        plan_kwargs={"lr": 1e-3},
        execution={"accelerator": "cpu", "devices": 2, "strategy": "ddp", "token_budget": 2048},
        enable_progress_bar=False,
    )
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    weights = torch.cat([p.detach().flatten() for p in model.module.parameters()])
    quiet = {"accelerator": "cpu", "progress_bar": False}
    sgf.tl.embed(adata, model, execution=quiet | {"devices": 2, "strategy": "ddp"}, key_added="ddp")
    sgf.tl.embed(adata, model, execution=quiet, key_added="local")
    np.save(output.with_name(f"weights_rank{rank}.npy"), weights.numpy())

    # perturbation: parts of a few cells shared out over both processes, in memory and into a store
    from scgeneformer.tl._perturb import _planning

    _planning.CHUNK_TOKENS = 3000  # several parts of a few cells
    options = {"max_cells": 8, "gene_shifts": True, "vocabulary": vocab, "inplace": False}
    two = sgf.tl.perturb(adata, model, "all", execution=quiet | {"devices": 2, "strategy": "ddp"}, **options)
    two_processes = quiet | {"devices": 2, "strategy": "ddp"}
    stored = sgf.tl.perturb(adata, model, "all", execution=two_processes, out=output.with_name("store"), **options)
    one = sgf.tl.perturb(adata, model, "all", execution=quiet, **options)
    # two-stage screens: stage 1 over both processes, candidates from all cells, stage 2 over both processes
    screen = options | {"screen": "two_stage", "n_confirm": 3, "n_confirm_genes": 2}
    two_screen = sgf.tl.perturb(adata, model, "all", execution=two_processes, **screen)
    stored_screen = sgf.tl.perturb(
        adata, model, "all", execution=two_processes, out=output.with_name("store_screen"), **screen
    )
    one_screen = sgf.tl.perturb(adata, model, "all", execution=quiet, **screen)
    if rank == 0:
        two["cells"].to_pickle(output.with_name("perturb_ddp.pkl"))
        one["cells"].to_pickle(output.with_name("perturb_local.pkl"))
        sgf.tl.read_perturbation_store(stored["path"])["cells"].to_pickle(output.with_name("perturb_store.pkl"))
        two_screen["cells"].to_pickle(output.with_name("screen_ddp.pkl"))
        one_screen["cells"].to_pickle(output.with_name("screen_local.pkl"))
        store_table = sgf.tl.read_perturbation_store(stored_screen["path"])["cells"]
        store_table.to_pickle(output.with_name("screen_store.pkl"))
    if rank == 0:
        np.save(output.with_name("ddp.npy"), adata.obsm["X_ddp"])
        np.save(output.with_name("local.npy"), adata.obsm["X_local"])
        history = {k: v.values.ravel().tolist() for k, v in model.history_.items() if k.startswith("train_loss")}
        output.write_text(json.dumps({"world": world, "history": history}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
