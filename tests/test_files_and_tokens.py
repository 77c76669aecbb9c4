"""Issue 20: the command line's paths, corpus files replaced on disk, token ids checked, ortholog tables.

Items 3, 12, 13 and 14 (the command line checks every path before any work), 7 (a corpus notices files replaced
after ``read_corpus``), 8 and 9 (tokenized datasets are checked against the vocabulary; token ids are never truncated
or wrapped) and 16 (ortholog tables with only the required columns).
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
from helpers import encoded_counts, fake_gene_id, make_counts, make_vocabulary, tiny_model, write_vocabulary_folder

import scgeneformer as sgf
from scgeneformer import cli
from scgeneformer._data._corpus._identity import CorpusChangedError, file_stamp


# -- the command line, run in this process ----------------------------------------------------------------------------
@pytest.fixture
def run_cli(capsys):
    """``run_cli(*args)`` runs the command line here: ``(exit status, stderr)``; settings are restored after."""
    before = sgf.settings._verbosity

    def run(*args) -> tuple[int, str]:
        try:
            cli.main([str(a) for a in args])
            status = 0
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else 1
        return status, capsys.readouterr().err

    yield run
    sgf.settings.verbosity = before


@pytest.fixture
def no_work(monkeypatch):
    """Reading the input or loading a model fails the test: the paths must be refused before any work."""

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the paths were checked")

    monkeypatch.setattr(cli, "_read", refuse)
    monkeypatch.setattr(cli, "_load_model", refuse)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def perturbed_file(tmp_path) -> Path:
    """An .h5ad file with goal-state perturbation results."""
    vocab = make_vocabulary("V1")
    adata = encoded_counts(vocab, n_obs=9, n_vars=40, seed=3)
    adata.obs["state"] = pd.Categorical(np.array(["a", "b", "c"])[np.arange(adata.n_obs) % 3])
    states = {"state_key": "state", "start_state": "a", "goal_state": "b"}
    sgf.tl.perturb(adata, tiny_model(vocab), "all", states=states, vocabulary=vocab)
    path = tmp_path / "s.h5ad"
    adata.write_h5ad(path)
    return path


def test_cli_tables_never_overwrite_anndata(tmp_path, run_cli, perturbed_file, monkeypatch):
    """Item 3: ``stats s.h5ad -o s.h5ad`` and ``perturb -o p.h5ad --table p.h5ad`` are refused before any work."""
    before = digest(perturbed_file)
    status, err = run_cli("stats", perturbed_file, "-o", perturbed_file, "--mode", "goal_state_shift")
    assert status == 1 and "never written over an AnnData file" in err and str(perturbed_file) in err
    assert digest(perturbed_file) == before
    status, err = run_cli("stats", perturbed_file, "-o", tmp_path / "stats.tsv", "--mode", "goal_state_shift")
    assert status == 0 and len(pd.read_csv(tmp_path / "stats.tsv", sep="\t")) > 0  # a real run writes its table
    hidden = tmp_path / "results.csv"  # an AnnData under a table's name
    hidden.write_bytes(perturbed_file.read_bytes())
    status, err = run_cli("stats", perturbed_file, "-o", hidden, "--mode", "goal_state_shift")
    assert status == 1 and "holds HDF5 data" in err and digest(hidden) == before
    link = tmp_path / "link.csv"  # the input under another name
    link.symlink_to(perturbed_file)
    status, err = run_cli("stats", perturbed_file, "-o", link, "--mode", "goal_state_shift")
    assert status == 1 and "same file as input" in err and digest(perturbed_file) == before

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the paths were checked")

    monkeypatch.setattr(cli, "_read", refuse)
    monkeypatch.setattr(cli, "_load_model", refuse)
    out = tmp_path / "p.h5ad"
    status, err = run_cli("perturb", perturbed_file, "-o", out, "-m", "model", "--table", out)
    assert status == 1 and "never written over an AnnData file" in err
    status, err = run_cli("perturb", perturbed_file, "-o", out, "-m", "model", "--table", perturbed_file)
    assert status == 1 and "never written over an AnnData file" in err and digest(perturbed_file) == before
    status, err = run_cli("perturb", perturbed_file, "-o", out, "-m", "model", "--table", hidden)
    assert status == 1 and "holds HDF5 data" in err and not out.exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["embed", "{data}", "-o", "{folder}", "-m", "model"], "is a folder"),
        (["encode", "{data}", "-o", "{folder}"], "is a folder"),
        (["annotate", "{data}", "-o", "{file}/out.h5ad", "-m", "model"], "cannot create its folder"),
        (["perturb", "{data}", "-o", "out.h5ad", "-m", "model", "--table", "{folder}"], "is a folder"),
        (["perturb", "{data}", "-o", "out.h5ad", "-m", "model", "--table", "cells.xlsx"], "written as .csv or .tsv"),
        (["stats", "{data}", "-o", "{folder}", "--mode", "vs_null"], "is a folder"),
        (["stats", "{data}", "-o", "stats.csv", "--mode", "vs_null", "--null", "{file}"], "reads .h5ad (AnnData)"),
        (["embed", "{data}", "-o", "out.csv", "-m", "model"], "the suffix names the format written"),
        (["encode", "{data}", "-o", "out.zarr"], ".zarr stores are not written here"),
        (["encode", "{data}", "-o", "out"], "no suffix is not one of them"),
    ],
)
def test_cli_checks_every_output_before_any_work(tmp_path, run_cli, no_work, args, expected, monkeypatch):
    """Item 14: every output path (and the extra inputs) of every command is checked before the input is read."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data.h5ad"
    make_counts(4, 10).write_h5ad(data)
    (tmp_path / "existing").mkdir()
    (tmp_path / "plain.txt").write_text("not a folder")
    names = {"data": data, "folder": tmp_path / "existing", "file": tmp_path / "plain.txt"}
    status, err = run_cli(*(a.format(**names) for a in args))
    assert status == 1 and expected in err, err
    assert "work started" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.h5ad", "existing", "plain.txt"]  # nothing written


def test_encode_writes_the_format_the_suffix_names(tmp_path, run_cli):
    """Item 12: ``encode in.h5ad -o x.h5mu`` writes a MuData (modality ``rna``); a MuData is never written as .h5ad."""
    import mudata

    vocab = make_vocabulary("V1")
    folder = write_vocabulary_folder(tmp_path / "dictionaries", vocab)
    make_counts(12, 300).write_h5ad(tmp_path / "counts.h5ad")
    status, err = run_cli("encode", tmp_path / "counts.h5ad", "-o", tmp_path / "x.h5mu", "--vocabulary", folder)
    assert status == 0, err
    written = mudata.read_h5mu(tmp_path / "x.h5mu")
    assert list(written.mod) == ["rna"] and "geneformer_ranks" in written["rna"].layers
    sgf.EncodingInfo(written["rna"])  # encoded, readable by the tools
    status, err = run_cli("encode", tmp_path / "x.h5mu", "-o", tmp_path / "y.h5ad", "--vocabulary", folder)
    assert status == 1 and "the input is a MuData (.h5mu); write it as .h5mu" in err
    assert not (tmp_path / "y.h5ad").exists()
    status, err = run_cli("encode", tmp_path / "x.h5mu", "-o", tmp_path / "y.h5mu", "--vocabulary", folder)
    assert status == 0 and list(mudata.read_h5mu(tmp_path / "y.h5mu").mod) == ["rna"]


def test_unreadable_inputs_are_named(tmp_path, run_cli):
    """Item 13: a CSV or text file named .h5ad, or a file holding the other format, gives an error naming it."""
    csv = tmp_path / "table.h5ad"
    csv.write_text("cell,gene\nc1,3\n")
    status, err = run_cli("encode", csv, "-o", tmp_path / "out.h5ad")
    assert status == 1 and f"{csv} is not a readable .h5ad file" in err and "signature" not in err
    mudata_file = tmp_path / "m.h5mu"
    import mudata

    mudata.MuData({"rna": make_counts(4, 10)}).write_h5mu(mudata_file)
    renamed = tmp_path / "m.h5ad"
    renamed.write_bytes(mudata_file.read_bytes())
    status, err = run_cli("encode", renamed, "-o", tmp_path / "out.h5ad")
    assert status == 1 and f"{renamed} is not a readable .h5ad file" in err and "name it .h5mu" in err
    other = tmp_path / "other.h5ad"  # HDF5, but not an AnnData
    with h5py.File(other, "w") as f:
        f["obs"] = np.arange(3)
    status, err = run_cli("encode", other, "-o", tmp_path / "out.h5ad")
    assert status == 1 and f"{other} is not a readable .h5ad file" in err
    status, err = run_cli("encode", tmp_path / "notes.txt", "-o", tmp_path / "out.h5ad")
    assert status == 2  # a missing input is a usage error
    (tmp_path / "notes.txt").write_text("hello")
    status, err = run_cli("encode", tmp_path / "notes.txt", "-o", tmp_path / "out.h5ad")
    assert status == 1 and "reads .h5ad (AnnData) and .h5mu (MuData) files" in err
    assert not (tmp_path / "out.h5ad").exists()


# -- corpora: files replaced after read_corpus --------------------------------------------------------------------
def write_encoded(path: Path, version: str, n_obs: int, seed: int) -> None:
    """An encoded AnnData written under a temporary name and renamed onto ``path`` (as a re-encoding would be)."""
    adata = encoded_counts(make_vocabulary(version), n_obs=n_obs, seed=seed)
    temporary = path.with_name(f"new-{path.name}")
    adata.write_h5ad(temporary)
    os.replace(temporary, path)


def reopened(corpus):
    """The corpus as a spawned data-loader worker receives it: no open file, an empty cache."""
    return pickle.loads(pickle.dumps(corpus))


def test_a_corpus_file_replaced_after_read_corpus_is_refused(tmp_path):
    """Item 7: reopening a replaced file (in this process or a worker) raises an error naming it."""
    paths = [tmp_path / "part0.h5ad", tmp_path / "part1.h5ad"]
    for i, path in enumerate(paths):
        write_encoded(path, "V1", 20, seed=i)
    corpus = sgf.read_corpus(paths)
    corpus.block_cells = 20  # one block per file
    before = corpus.sequences(np.arange(40))
    for got, want in zip(reopened(corpus).sequences(np.arange(40)), before, strict=True):
        np.testing.assert_array_equal(got, want)  # unchanged files reopen silently
    write_encoded(paths[1], "V2", 20, seed=1)  # re-encoded with V2: same cells, other tokens
    with pytest.raises(CorpusChangedError, match=r"part1\.h5ad changed on disk.*Call `sgf.read_corpus` again"):
        reopened(corpus).sequences([30])
    np.testing.assert_array_equal(reopened(corpus).sequences([3])[0], before[3])  # the other file is still fine
    with pytest.raises(Exception, match=r"part1\.h5ad changed on disk"):  # a forked data-loader worker
        list(corpus.dataloader(token_budget=4096, num_workers=1, shuffle=False))
    # the content is compared too: same stamp (e.g. a copy keeping the mtime), other encoding
    corpus._stamps[1] = file_stamp(paths[1])
    with pytest.raises(CorpusChangedError, match=r"part1\.h5ad .*version V1 -> V2"):
        reopened(corpus).sequences([30])
    paths[0].unlink()
    with pytest.raises(CorpusChangedError, match=r"part0\.h5ad .*no longer exists"):
        reopened(corpus).sequences([0])


def test_a_tokenized_file_replaced_after_read_corpus_is_refused(tmp_path):
    """Item 7, tokenized datasets: a replaced Parquet file is refused when reopened."""
    vocab = make_vocabulary("V1")
    path = tmp_path / "tokens.parquet"
    write_tokens(path, random_cells(vocab, 30, seed=0), row_group_size=10)
    corpus = sgf.read_corpus(path, vocabulary=vocab)
    reopened(corpus).sequences([25])
    write_tokens(path, random_cells(vocab, 30, seed=1), row_group_size=10)
    with pytest.raises(CorpusChangedError, match=r"tokens\.parquet changed on disk"):
        reopened(corpus).sequences([25])
    write_tokens(path, random_cells(vocab, 30, seed=1), row_group_size=15)
    corpus._stamps[0] = file_stamp(path)
    with pytest.raises(CorpusChangedError, match=r"row groups of \[10, 10, 10\] rows when opened"):
        reopened(corpus).sequences([25])


# -- tokenized datasets: token ids checked against the vocabulary --------------------------------------------------
def random_cells(vocab, n_cells: int, *, seed: int, lengths=(5, 60)) -> list[list[int]]:
    """Rank encodings of ``n_cells`` random cells (distinct gene ids; V2: wrapped in <cls> … <eos>)."""
    rng = np.random.default_rng(seed)
    first_gene = 1 + max(vocab.special_ids)
    cells = []
    for _ in range(n_cells):
        # gene ids valid in both synthetic vocabularies (V1's is two tokens shorter)
        genes = rng.choice(np.arange(first_gene, 2000), size=rng.integers(*lengths), replace=False).tolist()
        cells.append([vocab.cls_id, *genes, vocab.eos_id] if vocab.cls_id is not None else genes)
    return cells


def write_tokens(path: Path, cells, *, row_group_size: int | None = None, **columns) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"input_ids": cells, **columns})
    temporary = path.with_name(f"new-{path.name}")
    pq.write_table(table, temporary, row_group_size=row_group_size)
    os.replace(temporary, path)
    return path


def test_tokenized_datasets_are_checked_against_the_vocabulary(tmp_path):
    """Item 8: special tokens where the declared vocabulary puts them, ids in its range, named errors."""
    v1, v2 = make_vocabulary("V1"), make_vocabulary("V2")
    v2_cells = write_tokens(tmp_path / "v2.parquet", random_cells(v2, 20, seed=0))
    v1_cells = write_tokens(tmp_path / "v1.parquet", random_cells(v1, 20, seed=0))
    assert sgf.read_corpus(v2_cells, vocabulary=v2).n_cells == sgf.read_corpus(v1_cells, vocabulary=v1).n_cells == 20
    with pytest.raises(ValueError, match=r"v2\.parquet: every cell starts with token 2 and ends with token 3.*V2"):
        sgf.read_corpus(v2_cells, vocabulary=v1)  # V2 data declared V1
    with pytest.raises(ValueError, match=r"v1\.parquet: cell 0 holds token id \d+ first, where <cls> \(2\) belongs"):
        sgf.read_corpus(v1_cells, vocabulary=v2)  # V1 data declared V2
    stripped = write_tokens(tmp_path / "stripped.parquet", [c[1:-1] for c in random_cells(v2, 20, seed=0)])
    with pytest.raises(ValueError, match=r"stripped\.parquet: cell 0 .* where <cls> \(2\) belongs"):
        sgf.read_corpus(stripped, vocabulary=v2)  # V2 data without <cls>/<eos>
    cells = random_cells(v2, 20, seed=0)
    cells[4] = [*cells[4][:-1], v2.pad_id, v2.eos_id]  # a pad token inside a cell
    padded = write_tokens(tmp_path / "padded.parquet", cells)
    with pytest.raises(ValueError, match=r"padded\.parquet: cell 4 holds token id 0, a special token"):
        sgf.read_corpus(padded, vocabulary=v2)
    cells = random_cells(v2, 20, seed=0)
    cells[7] = cells[7][:-1]  # no <eos>
    with pytest.raises(ValueError, match=r"cell 7 holds token id \d+ last, where <eos> \(3\) belongs"):
        sgf.read_corpus(write_tokens(tmp_path / "no_eos.parquet", cells), vocabulary=v2)
    # beyond the cells checked when opening: every row group is checked when it is read
    cells = random_cells(v1, 400, seed=1)
    cells[300] = [v1.mask_id, *cells[300]]
    late = write_tokens(tmp_path / "late.parquet", cells, row_group_size=100)
    corpus = sgf.read_corpus(late, vocabulary=v1)
    corpus.block_cells = 100
    corpus.sequences(np.arange(300))
    with pytest.raises(ValueError, match=r"late\.parquet \(row group 3\): cell 300 holds token id 1, a special token"):
        corpus.sequences([300])


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        (1234.4, "token id 1234.4, which is not an integer"),
        (float("nan"), "token id nan, which is not an integer"),
        (2**32 + 5, "token id 4294967301, outside the V1 vocabulary"),
        (-3, "token id -3, outside the V1 vocabulary"),
        (99_999, "token id 99999, outside the V1 vocabulary"),
    ],
)
def test_token_ids_are_never_truncated_or_wrapped(tmp_path, bad, expected):
    """Item 9: non-integer, negative, wrapping and out-of-vocabulary ids are refused, naming the file and the id."""
    import pyarrow as pa

    vocab = make_vocabulary("V1")
    cells = random_cells(vocab, 12, seed=2)
    cells[5] = [*cells[5], bad]
    kind = pa.float64() if isinstance(bad, float) else pa.int64()
    path = write_tokens(tmp_path / "ids.parquet", pa.array(cells, type=pa.list_(kind)))
    with pytest.raises(ValueError, match=rf"ids\.parquet: cell 5 holds {expected}"):
        sgf.read_corpus(path, vocabulary=vocab)
    whole = write_tokens(tmp_path / "whole.parquet", pa.array(random_cells(vocab, 12, seed=2), type=pa.list_(kind)))
    corpus = sgf.read_corpus(whole, vocabulary=vocab)  # whole numbers stored as floats are token ids
    assert corpus.sequences([0])[0].dtype == np.int32
    with pytest.raises(TypeError, match=r"strings\.parquet: column 'input_ids' holds list<\w+: string>"):
        sgf.read_corpus(write_tokens(tmp_path / "strings.parquet", [["a", "b"]]), vocabulary=vocab)


def test_gene_token_ids_of_encoded_data_are_checked(tmp_path):
    """Item 9, encoded AnnData: the genes' token ids are integers of the vocabulary, nothing truncated."""
    adata = encoded_counts(make_vocabulary("V1"), n_obs=6)
    tokens = adata.var["geneformer_token"].to_numpy()
    adata.var["geneformer_token"] = tokens.astype(float)
    sgf.EncodingInfo(adata)  # whole numbers as floats are fine
    adata.var.loc[adata.var_names[0], "geneformer_token"] = 1234.4
    with pytest.raises(ValueError, match=r"var\['geneformer_token'\] holds token id 1234.4"):
        sgf.EncodingInfo(adata)
    adata.var["geneformer_token"] = tokens
    adata.var.loc[adata.var_names[1], "geneformer_token"] = 2**32 + 5
    with pytest.raises(ValueError, match="token id 4294967301"):
        sgf.EncodingInfo(adata)
    adata.var.loc[adata.var_names[1], "geneformer_token"] = -7
    adata.write_h5ad(tmp_path / "bad.h5ad")
    with pytest.raises(ValueError, match=r"bad\.h5ad: var\['geneformer_token'\] holds token id -7"):
        sgf.read_corpus(tmp_path / "bad.h5ad")


# -- orthologs -----------------------------------------------------------------------------------------------------
def test_map_orthologs_with_only_the_required_columns(tmp_path):
    """Item 16: the confidence and gene-order columns are optional, in a DataFrame or a CSV file."""
    table = pd.DataFrame(
        {
            "Gene stable ID": ["ENSMUSG01", "ENSMUSG02", "ENSMUSG03", "ENSMUSG03"],
            "Gene name": ["Cd14", "Cd8b1", "Fcgr4", "Fcgr4"],
            "Human gene stable ID": [fake_gene_id(1), fake_gene_id(2), fake_gene_id(3), fake_gene_id(4)],
            "Human homology type": ["ortholog_one2one", "ortholog_one2one", "ortholog_one2many", "ortholog_one2many"],
        }
    )
    table.to_csv(tmp_path / "orthologs.csv", index=False)
    for source in (table, tmp_path / "orthologs.csv"):
        counts = make_counts(5, 4)
        counts.var["symbol"] = ["Cd14", "cd8b1", "Fcgr4", "Actb", "Gm1", "X"][: counts.n_vars]
        sgf.pp.map_orthologs(counts, gene_id_key="symbol", table=source)
        mapped = counts.var["human_ensembl_id"].tolist()
        assert mapped[:2] == [fake_gene_id(1), fake_gene_id(2)] and pd.isna(mapped[2])
        sgf.pp.map_orthologs(counts, gene_id_key="symbol", table=source, one_to_one=False, key_added="best")
        assert counts.var["best"].iloc[2] == fake_gene_id(3)  # the table's first ortholog, in its order
        counts.write_h5ad(tmp_path / "mapped.h5ad")
        assert ad.read_h5ad(tmp_path / "mapped.h5ad").uns["best"]["n_mapped"] == 3
