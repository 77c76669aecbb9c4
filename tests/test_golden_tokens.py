"""Token identity with the reference tokenizer's golden outputs (``../shared/golden/tokens``)."""

import numpy as np
import pytest
from helpers import GOLDEN_INPUTS, encode_golden_input, shared_path

import scgeneformer as sgf


def encode_like_reference(name, version, **kwargs):
    adata = encode_golden_input(name, version, **kwargs)
    with np.load(shared_path("golden", "tokens", f"tokens_{name}_{version}.npz"), allow_pickle=True) as npz:
        golden = dict(npz)  # an NpzFile decompresses an array on every access
    return adata, golden


def golden_cells(golden):
    offsets = golden["offsets"]
    for i, cell in enumerate(golden["obs_names"]):
        span = slice(offsets[i], offsets[i + 1])
        yield i, cell, golden["input_ids"][span], golden["tie_run"][span]


def assert_equal_up_to_ties(ours, ref, tie_run, *, tie_at_cut, cell):
    """Identical, except that tokens may be permuted inside runs of exactly tied values.

    A tie run that reaches the truncation cut may hold different genes of the tie group (the reference's unstable
    sort decides which of them survive); those positions only need to be tied.
    """
    assert len(ours) == len(ref), cell
    runs = {}
    for position, run_start in enumerate(tie_run):
        runs.setdefault(int(run_start), []).append(position)
    for positions in runs.values():
        if len(positions) == 1:
            assert ours[positions[0]] == ref[positions[0]], (cell, positions[0])
        elif not (tie_at_cut and positions[-1] >= len(ref) - 2):
            assert sorted(ours[positions]) == sorted(ref[positions]), (cell, positions)


@pytest.mark.parametrize("version", ["V1", "V2"])
@pytest.mark.parametrize("name", list(GOLDEN_INPUTS))
def test_reference_quirks_reproduce_golden_tokens(name, version):
    adata, golden = encode_like_reference(name, version, reference_quirks=True)
    encoded = adata.obs_names[adata.obs["geneformer_n_tokens"].to_numpy() > 0]
    assert set(encoded) == set(golden["obs_names"])
    dropped = dict(zip(golden["dropped_obs_names"], golden["dropped_reason"], strict=True))
    assert set(dropped) == set(adata.obs_names) - set(encoded)
    positions = adata.obs_names.get_indexer(golden["obs_names"])
    ours = sgf.pp.input_ids(adata, positions)
    tie_at_cut = dict(zip(golden["obs_names"], golden["cell_tie_at_cut"], strict=True))
    n_tied_cells = 0
    for i, cell, ref, tie_run in golden_cells(golden):
        if np.array_equal(ours[i], ref):
            continue
        n_tied_cells += 1
        assert_equal_up_to_ties(ours[i], ref, tie_run, tie_at_cut=bool(tie_at_cut[cell]), cell=cell)
    assert n_tied_cells <= golden["cell_has_tie"].sum()
    np.testing.assert_array_equal(adata.obs["geneformer_n_tokens"].to_numpy()[positions], golden["length"])


def test_default_equals_reference_on_clean_data():
    """Unique Ensembl IDs and integer counts: the default encoding is the reference's, cell for cell."""
    adata, golden = encode_like_reference("A", "V1")
    positions = adata.obs_names.get_indexer(golden["obs_names"])
    for i, (seq, (_, _, ref, _)) in enumerate(
        zip(sgf.pp.input_ids(adata, positions), golden_cells(golden), strict=True)
    ):
        assert np.array_equal(seq, ref), i


def test_default_fixes_documented_reference_bugs():
    """D holds adversarial identifiers: the default maps what the reference drops and drops what it injects."""
    quirks, _ = encode_like_reference("D", "V2", reference_quirks=True)
    default, _ = encode_like_reference("D", "V2")
    tokens_q = quirks.var["geneformer_token"]
    tokens_d = default.var["geneformer_token"]
    kind = quirks.var["adv_kind"].astype(str)
    version_suffixed = kind.str.startswith("version-suffixed")
    assert (tokens_q[version_suffixed] == -1).all() and (tokens_d[version_suffixed] >= 0).all()
    nan_string = quirks.var["ensembl_id"].astype(str) == "nan"
    assert (tokens_q[nan_string] >= 0).all() and (tokens_d[nan_string] == -1).all()
