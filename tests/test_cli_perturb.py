"""``scgeneformer perturb``: two-stage screens, a dry run that writes nothing, mask and separate genes."""

import json

import anndata as ad
import torch
from helpers import cli_status, encoded_counts, make_vocabulary, tiny_bert_config, write_vocabulary_folder

import scgeneformer as sgf


def test_perturb_options_of_the_command_line(tmp_path, capsys):
    vocab = make_vocabulary("V1")
    adata = encoded_counts(vocab, n_obs=8)
    path = tmp_path / "encoded.h5ad"
    adata.write_h5ad(path)
    torch.manual_seed(0)
    sgf.GeneformerModel(bert_config=tiny_bert_config(vocab), vocabulary="V1").save(tmp_path / "model")
    folder = str(write_vocabulary_folder(tmp_path / "dictionaries", vocab))
    common = ["-m", str(tmp_path / "model"), "--vocabulary", folder, "--max-cells", "3", "--accelerator", "cpu"]
    out = tmp_path / "out.h5ad"

    assert cli_status(["perturb", str(path), "-o", str(out), *common, "--screen", "two_stage", "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["n_cells"] == 3 and plan["forward_passes"] > 0 and "seconds_estimate" in plan
    assert not out.exists()  # a dry run writes nothing

    args = ["perturb", str(path), "-o", str(out), *common, "--screen", "two_stage", "--n-confirm", "2"]
    assert cli_status([*args, "--n-confirm-genes", "1", "--no-progress"]) == 0
    result = ad.read_h5ad(out).uns["geneformer_perturb"]
    assert result["params"]["screen"]["n_confirm"] == 2
    assert 0 < result["cells"]["confirmed"].sum() < len(result["cells"])
    # overexpression of every gene, two-stage, with a share of each cell's genes confirmed in rounds
    args = ["perturb", str(path), "-o", str(out), *common, "--screen", "two_stage", "--n-confirm", "0.1"]
    assert cli_status([*args, "--n-confirm-genes", "0", "--perturbation", "overexpress", "--no-progress"]) == 0
    result = ad.read_h5ad(out).uns["geneformer_perturb"]
    assert result["params"]["perturbation"] == "overexpress" and result["params"]["screen"]["n_confirm"] == 0.1
    assert 0 < result["cells"]["confirmed"].sum() < len(result["cells"])
    capsys.readouterr()
    bad_share = ["perturb", str(path), "-o", str(out), *common, "--screen", "two_stage", "--n-confirm", "1.5"]
    assert cli_status(bad_share) != 0
    assert "takes a whole number >= 0 or a share between 0 and 1, got 1.5" in capsys.readouterr().err

    genes = ["-g", "GENE3", "-g", "GENE5"]
    args = ["perturb", str(path), "-o", str(out), *common, *genes, "--combine", "separately", "--perturbation", "mask"]
    assert cli_status([*args, "--no-progress"]) == 0
    table = ad.read_h5ad(out).uns["geneformer_perturb"]["cells"]
    assert set(table["perturbed"].astype(str)) <= {"GENE3", "GENE5"} and len(table) > 1
