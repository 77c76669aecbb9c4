"""Compare two recordings of ``record_outputs.py``: every call and array, bit for bit (NaN equal to NaN).

Usage: ``python benchmarks/compare_outputs.py before.pkl after.pkl``; exits 1 if anything differs.
"""

from __future__ import annotations

import pickle
import sys

import numpy as np


def same(x: np.ndarray, y: np.ndarray) -> bool:
    if x.shape != y.shape:
        return False
    return bool(np.array_equal(x, y, equal_nan=x.dtype.kind in "fc"))


def main(before: str, after: str) -> int:
    with open(before, "rb") as f:
        a = pickle.load(f)  # our own recordings: trusted files
    with open(after, "rb") as f:
        b = pickle.load(f)
    print("calls", len(a), len(b), "arrays", sum(map(len, a.values())), sum(map(len, b.values())))
    bad = 0
    for call in sorted(set(a) | set(b)):
        if call not in a or call not in b:
            print("missing call", call, call in a, call in b)
            bad += 1
            continue
        for name in sorted(set(a[call]) | set(b[call])):
            if name not in a[call] or name not in b[call]:
                print("missing array", call, name, name in a[call], name in b[call])
                bad += 1
            elif not same(a[call][name], b[call][name]):
                print("DIFF", call, name, a[call][name].dtype, a[call][name].shape, b[call][name].shape)
                bad += 1
    print("differences:", bad)
    return int(bad > 0)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
