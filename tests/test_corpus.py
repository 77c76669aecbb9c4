"""Corpora larger than memory (issue 11): encoded files and tokenized Parquet datasets, block reading, the loader."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import encoded_counts, make_vocabulary, shared_path, tiny_bert_config

import scgeneformer as sgf
from scgeneformer._compute import _batching
from scgeneformer._compute._batching import LengthGroupedBatchSampler

QUIET = {"accelerator": "cpu", "progress_bar": False}


def write_parts(tmp_path, vocab, sizes=(23, 17, 31), *, zarr_part: int | None = None) -> tuple[list, ad.AnnData]:
    """Encoded AnnData files (one per size) and their concatenation in memory."""
    parts, paths = [], []
    for i, n in enumerate(sizes):
        adata = encoded_counts(vocab, n_obs=n, seed=i)
        adata.obs_names = [f"f{i}_{name}" for name in adata.obs_names]
        adata.obs["part"] = f"f{i}"
        adata.obs["cell_type"] = np.array(["B", "T"])[np.arange(n) % 2]
        if i == zarr_part:
            path = tmp_path / f"part{i}.zarr"
            adata.write_zarr(path)
        else:
            path = tmp_path / f"part{i}.h5ad"
            adata.write_h5ad(path)
        parts.append(adata)
        paths.append(path)
    whole = ad.concat(parts, merge="same", uns_merge="first")
    return paths, whole


@pytest.mark.filterwarnings("ignore:Writing zarr v2 data:UserWarning")  # anndata's notice about its next default
@pytest.mark.parametrize("version", ["V1", "V2"])
def test_encoded_files_read_like_the_concatenated_data(tmp_path, version):
    vocab = make_vocabulary(version)
    paths, whole = write_parts(tmp_path, vocab, zarr_part=1)
    corpus = sgf.read_corpus(paths)
    assert corpus.n_cells == whole.n_obs == 71 and list(corpus.obs_names) == list(whole.obs_names)
    assert corpus.version == version and "part" in corpus.obs
    corpus.block_cells = 8  # blocks cross file boundaries
    expected = sgf.EncodingInfo(whole).sequences(np.arange(whole.n_obs))
    order = np.random.default_rng(0).permutation(whole.n_obs)
    for cell, sequence in zip(order, corpus.sequences(order), strict=True):
        np.testing.assert_array_equal(sequence, expected[cell])
    occurrences = sgf.EncodingInfo(whole).token_occurrences()
    np.testing.assert_array_equal(corpus.token_occurrences()[: len(occurrences)], occurrences)
    token = int(expected[3][len(expected[3]) // 2])
    np.testing.assert_array_equal(corpus.cells_holding([token]), sgf.EncodingInfo(whole).cells_holding([token]))


def test_read_corpus_errors_are_clear(tmp_path):
    vocab = make_vocabulary("V1")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sgf.read_corpus(tmp_path / "missing.h5ad")
    plain = encoded_counts(vocab, n_obs=5)
    del plain.uns["geneformer"]
    plain.write_h5ad(tmp_path / "plain.h5ad")
    with pytest.raises(KeyError, match="not rank-encoded"):
        sgf.read_corpus(tmp_path / "plain.h5ad")
    encoded_counts(vocab, n_obs=5).write_h5ad(tmp_path / "v1.h5ad")
    encoded_counts(make_vocabulary("V2"), n_obs=5).write_h5ad(tmp_path / "v2.h5ad")
    with pytest.raises(ValueError, match="encoded differently"):
        sgf.read_corpus([tmp_path / "v1.h5ad", tmp_path / "v2.h5ad"])
    pd.DataFrame({"input_ids": [[5, 6, 7]]}).to_parquet(tmp_path / "tokens.parquet")
    with pytest.raises(ValueError, match="vocabulary"):
        sgf.read_corpus(tmp_path / "tokens.parquet")


def test_ann_collection_and_backed_data_are_reopened_from_their_files(tmp_path):
    from anndata.experimental import AnnCollection

    vocab = make_vocabulary("V1")
    paths, whole = write_parts(tmp_path, vocab, sizes=(9, 12))
    backed = [ad.read_h5ad(p, backed="r") for p in paths]
    corpus = sgf.read_corpus(AnnCollection(backed, join_vars="inner"))
    assert corpus.n_cells == 21 and all(isinstance(s, type(paths[0])) for s in corpus.sources)
    expected = sgf.EncodingInfo(whole).sequences(np.arange(21))
    for got, want in zip(corpus.sequences(np.arange(21)), expected, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_tokenized_parquet_datasets(tmp_path, version):
    vocab = make_vocabulary(version)
    adata = encoded_counts(vocab, n_obs=30)
    sequences = sgf.EncodingInfo(adata).sequences(np.arange(30))
    folder = tmp_path / "dataset"
    folder.mkdir()
    for i, part in enumerate((slice(0, 12), slice(12, 30))):  # two files, several row groups each
        table = pd.DataFrame(
            {
                "input_ids": [s.astype(np.int64).tolist() for s in sequences[part]],
                "length": [len(s) for s in sequences[part]],
                "cell_type": np.array(["B", "T", "NK"])[np.arange(30)[part] % 3],
                "name": adata.obs_names[part],
            }
        )
        table.to_parquet(folder / f"part{i}.parquet", row_group_size=5)
    corpus = sgf.read_corpus(folder, vocabulary=vocab, cell_names="name")
    assert list(corpus.obs_names) == list(adata.obs_names) and list(corpus.obs.columns) == ["length", "cell_type"]
    corpus.block_cells = 4
    for got, want in zip(corpus.sequences(np.arange(30)[::-1]), sequences[::-1], strict=True):
        np.testing.assert_array_equal(got, want)
    model = sgf.GeneformerModel(bert_config=tiny_bert_config(vocab), vocabulary=version)
    sgf.tl.embed(corpus, model, execution=QUIET)
    sgf.tl.embed(adata, model, execution=QUIET)
    np.testing.assert_allclose(corpus.adata.obsm["X_geneformer"], adata.obsm["X_geneformer"], atol=1e-5)


def test_hugging_face_datasets_folders_are_memory_mapped_arrow(tmp_path):
    import pyarrow as pa

    vocab = make_vocabulary("V2")
    adata = encoded_counts(vocab, n_obs=12)
    sequences = sgf.EncodingInfo(adata).sequences(np.arange(12))
    table = pa.table({"input_ids": [s.astype(np.int64).tolist() for s in sequences], "organ": ["blood"] * 12})
    folder = tmp_path / "tokenized.dataset"  # what `datasets.Dataset.save_to_disk` writes: Arrow streams
    folder.mkdir()
    with pa.ipc.new_stream(folder / "data-00000-of-00001.arrow", table.schema) as writer:
        for batch in table.to_batches(max_chunksize=5):
            writer.write_batch(batch)
    (folder / "state.json").write_text("{}")
    corpus = sgf.read_corpus(folder, vocabulary=vocab)
    assert corpus.n_cells == 12 and list(corpus.obs.columns) == ["organ"]
    np.testing.assert_array_equal(corpus.lengths, [len(s) for s in sequences])
    for got, want in zip(corpus.sequences(np.arange(12)), sequences, strict=True):
        np.testing.assert_array_equal(got, want)


def test_the_shared_genecorpus_sample_reads_as_a_v1_corpus():
    path = shared_path("data", "datasets", "genecorpus_500_tokenized_v1.parquet")
    vocab = sgf.get_vocabulary(shared_path("data", "dictionaries", "V1_gc30M"))
    corpus = sgf.read_corpus(path, vocabulary=vocab)
    assert corpus.n_cells == 500 and corpus.version == "V1" and corpus.lengths.max() <= 2048
    np.testing.assert_array_equal(corpus.lengths, corpus.obs["length"])
    import pyarrow.parquet as pq

    first = pq.read_table(path, columns=["input_ids"]).column(0)[7].as_py()
    np.testing.assert_array_equal(corpus.sequences([7])[0], first)


def test_embed_annotate_and_perturb_a_corpus_like_the_data_in_memory(tmp_path):
    vocab = make_vocabulary("V2")
    paths, whole = write_parts(tmp_path, vocab, sizes=(14, 11))
    corpus = sgf.read_corpus(paths)
    corpus.block_cells = 5
    torch.manual_seed(0)
    model = sgf.GeneformerModel(bert_config=tiny_bert_config(vocab), vocabulary="V2")
    sgf.tl.embed(corpus, model, execution=QUIET)
    sgf.tl.embed(whole, model, execution=QUIET)
    np.testing.assert_allclose(corpus.adata.obsm["X_geneformer"], whole.obsm["X_geneformer"], atol=1e-5)
    var_token = sgf.EncodingInfo(whole).var_token
    column = int(np.argmax(np.where(var_token >= 0, np.asarray((whole.X > 0).sum(0)).ravel(), -1)))
    gene, symbol = whole.var_names[column], vocab.id_to_symbol[var_token[column]]
    on_disk = sgf.tl.perturb(corpus, model, [symbol], execution=QUIET, vocabulary=vocab, inplace=False)
    in_memory = sgf.tl.perturb(whole, model, [gene], execution=QUIET, vocabulary=vocab, inplace=False)
    pd.testing.assert_series_equal(on_disk["cells"]["cell"].astype(str), in_memory["cells"]["cell"].astype(str))
    np.testing.assert_allclose(on_disk["cells"]["cosine"], in_memory["cells"]["cosine"], atol=1e-5)


@pytest.mark.slow
def test_train_and_annotate_on_a_corpus_with_loader_workers(tmp_path):
    vocab = make_vocabulary("V1")
    paths, _ = write_parts(tmp_path, vocab, sizes=(30, 26))
    corpus = sgf.read_corpus(paths)
    corpus.block_cells = 8
    torch.manual_seed(0)
    model = sgf.GeneformerModel(corpus, bert_config=tiny_bert_config(vocab), vocabulary="V1")
    assert model.adata is None and model.training_data is corpus.adata
    model.train(max_epochs=1, execution=QUIET | {"batch_size": 8, "num_workers": 1})
    assert np.isfinite(model.history_["train_loss"].to_numpy(dtype=float)).all()
    report = model.train_classifier(
        labels_key="cell_type", max_epochs=2, execution=QUIET | {"batch_size": 8}, plan_kwargs={"lr": 1e-3}
    )
    assert report["n_cells"] > 0 and set(report["classes"]) == {"B", "T"}
    sgf.tl.annotate(corpus, model, execution=QUIET)
    assert corpus.adata.obs["geneformer_label"].notna().all()
    corpus.adata.write_h5ad(tmp_path / "results.h5ad")  # results survive a round trip
    assert "geneformer_label" in ad.read_h5ad(tmp_path / "results.h5ad").obs


def test_block_sampler_reads_each_window_once_and_shards_whole_windows(monkeypatch):
    rng = np.random.default_rng(0)
    positions = np.sort(rng.choice(5000, size=3000, replace=False))
    lengths = rng.integers(50, 400, size=5000)

    def sampler(**kwargs):
        return LengthGroupedBatchSampler(
            positions, lengths[positions], token_budget=2048, block_cells=64, seed=3, **kwargs
        )

    single = sampler()
    batches = single._batches()
    cells = np.concatenate(batches)
    assert len(cells) == len(positions) and set(cells) == set(positions)  # every cell once
    assert all(lengths[b].max() * len(b) <= 2048 or len(b) == 1 for b in batches)
    windows_seen = [set(b // 64) for b in batches]
    # consecutive batches come from one window of at most 16 blocks: the reader's cache holds it
    assert max(len(w) for w in windows_seen) <= _batching.WINDOW_BLOCKS
    single.set_epoch(1)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, single._batches(), strict=False))

    shards = []
    for rank in range(2):
        monkeypatch.setattr(_batching, "world", lambda rank=rank: (2, rank))
        shards.append(sampler()._batches())
    assert len(shards[0]) == len(shards[1])  # the same number of steps on both ranks
    blocks = [set(np.concatenate(s) // 64) for s in shards]
    assert not blocks[0] & blocks[1]  # no block is read by both processes
    monkeypatch.setattr(_batching, "world", lambda: (2, 1))
    everything = np.concatenate(sampler(even_split=False, shuffle=False)._batches())
    monkeypatch.setattr(_batching, "world", lambda: (2, 0))
    everything = np.concatenate([everything, *sampler(even_split=False, shuffle=False)._batches()])
    assert sorted(everything) == sorted(positions)  # inference drops nothing


def test_corpus_dataloader_gives_every_cell_once_with_workers(tmp_path):
    vocab = make_vocabulary("V1")
    paths, whole = write_parts(tmp_path, vocab, sizes=(40, 35))
    corpus = sgf.read_corpus(paths)
    corpus.block_cells = 8
    expected = sgf.EncodingInfo(whole).sequences(np.arange(whole.n_obs))
    seen = []
    loader = corpus.dataloader(token_budget=128, num_workers=2)
    for batch in loader:
        for row, cell in enumerate(batch["cells"].tolist()):
            n = int(batch["attention_mask"][row].sum())
            np.testing.assert_array_equal(batch["input_ids"][row, :n].numpy(), expected[cell])
            assert not batch["attention_mask"][row, n:].any()
            seen.append(cell)
    assert sorted(seen) == list(range(whole.n_obs))
    # workers hand over several batches at a time: the same batches as the sampler's, each worker its own
    batches = [tuple(b) for b in loader.batch_sampler]
    assert len(loader) == len(batches) > 2 * _batching.BATCHES_PER_TRANSFER
    assert sorted(tuple(b["cells"].tolist()) for b in loader) == sorted(batches)
    groups = list(loader.loader.sampler)
    workers = [{batches.index(tuple(b)) % 2 for b in group} for group in groups]
    assert all(len(w) == 1 for w in workers)  # each group holds batches of one worker (batch i: worker i % 2) ...
    assert workers[0] == {0} and workers[1] == {1}  # ... and goes to that worker
    with pytest.raises(ValueError, match="num_workers"):
        sgf.Execution(num_workers=-1)
