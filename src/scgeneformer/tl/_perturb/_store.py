"""Perturbation results on disk: a Parquet dataset written part by part, resumable, read back in chunks.

Layout of a store folder::

    manifest.json          what was run: parameters, model fingerprint, cells, parts (written first, atomically)
    parts/part-000042.parquet   the result rows of part 42 (a group of cells), written atomically when it finishes
    summary.parquet        the per-perturbation summary, written when every part is done

A part's file exists only once the part is complete (written to a temporary name, then renamed), so a run killed at
any moment loses only the parts in flight; re-running the same call finds the finished parts and computes the rest.
A call whose parameters, model or cells differ from the manifest's is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..._utils._files import atomic_path

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from ..._data._encoding import EncodingInfo

FORMAT = "scgeneformer-perturbation-store/1"
#: Columns of the result table that hold names: stored dictionary-encoded, read back as categoricals.
#: Temporary part files untouched for this long are leftovers of a killed run (cleaned when resuming).
STALE_TEMPORARY_S = 300
NAME_COLUMNS = ("cell", "perturbed", "perturbed_id", "perturbed_token", "affected", "affected_id")


def model_fingerprint(module: torch.nn.Module) -> str:
    """sha256 of the model's weights (names, shapes, dtypes and values), to tell whether a store came from it."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(-1).numpy().tobytes())
    return digest.hexdigest()


def cells_fingerprint(names: Sequence[str]) -> str:
    """sha256 of the perturbed cells' names, in processing order."""
    return hashlib.sha256("\n".join(map(str, names)).encode()).hexdigest()


def _read_manifest(store: Path, manifest: Path) -> dict[str, Any]:
    """The manifest's content; a damaged one gives one clear error naming the store."""
    try:
        content = json.loads(manifest.read_text())
        if not isinstance(content, dict):
            raise TypeError("not a JSON object")
        if content.get("format") == FORMAT:
            if not isinstance(content["identity"], dict) or not isinstance(content["n_parts"], int):
                raise TypeError("identity or n_parts of the wrong type")
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as error:
        msg = (
            f"The perturbation store {store} has a damaged manifest.json ({type(error).__name__}: {error}); "
            "its results cannot be trusted: delete the folder and run sgf.tl.perturb(..., out=path) again, "
            "or write to a new path."
        )
        raise ValueError(msg) from error
    return content


def tokens_fingerprint(info: EncodingInfo, selected: np.ndarray, block: int = 4096) -> str:
    """sha256 of the selected cells' token sequences, in processing order (re-encoded cells change it)."""
    digest = hashlib.sha256()
    for start in range(0, len(selected), block):
        for sequence in info.sequences(selected[start : start + block]):
            digest.update(np.asarray(sequence, dtype=np.int64).tobytes())
            digest.update(b"|")
    return digest.hexdigest()


class PerturbationStore:
    """A folder of perturbation results written part by part (see the module docstring).

    Parameters
    ----------
    path
        The store's folder.

    Examples
    --------
    >>> sgf.tl.perturb(adata, model, "all", out="screen")  # doctest: +SKIP
    >>> store = sgf.tl.PerturbationStore("screen")  # doctest: +SKIP
    >>> for part in store.iter_parts(["cell", "perturbed", "cosine"], cell_rows=True):  # doctest: +SKIP
    ...     print(part.groupby("perturbed", observed=True)["cosine"].mean())
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        manifest = self.path / "manifest.json"
        if not manifest.is_file():
            msg = f"{self.path} is not a perturbation store (no manifest.json); run sgf.tl.perturb(..., out=path)."
            raise FileNotFoundError(msg)
        self.manifest = _read_manifest(self.path, manifest)
        if self.manifest.get("format") != FORMAT:
            msg = f"{self.path} was written in an unknown format {self.manifest.get('format')!r}."
            raise ValueError(msg)

    # -- creating and resuming ----------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, identity: dict[str, Any], n_parts: int) -> PerturbationStore:
        """Create the store, or reopen it to resume when it holds the same run; refuse a different run."""
        path = Path(path)
        manifest = path / "manifest.json"
        identity = json.loads(json.dumps(identity))  # plain JSON values, as they will be read back
        if not manifest.is_file():
            cls._create(path, manifest, identity, n_parts)
        store = cls(path)
        recorded = store.manifest["identity"]
        differing = sorted(k for k in set(recorded) | set(identity) if recorded.get(k) != identity.get(k))
        if differing or store.manifest["n_parts"] != n_parts:
            details = "; ".join(f"{k}: {recorded.get(k)!r} there, {identity.get(k)!r} now" for k in differing[:5])
            msg = (
                f"{path} holds the results of a different perturbation run ({details or 'other parts'}). "
                "Resume it with the same arguments, model and cells, or write to a new path."
            )
            raise ValueError(msg)
        store._clean_temporary_parts()
        return store

    @staticmethod
    def _create(path: Path, manifest: Path, identity: dict[str, Any], n_parts: int) -> None:
        """Create the manifest exclusively: of runs starting together, one creates it, the others compare with it."""
        # Only our own files may be there (the processes of a distributed run create the store together).
        foreign = (
            [
                p.name
                for p in path.iterdir()
                if p.name not in ("parts", "manifest.json") and ".manifest.json.tmp" not in p.name
            ]
            if (path.is_dir())
            else []
        )
        if foreign or (path.exists() and not path.is_dir()):
            msg = f"{path} exists and is not a perturbation store: choose a new or empty folder for out=."
            raise FileExistsError(msg)
        (path / "parts").mkdir(parents=True, exist_ok=True)
        content = {"format": FORMAT, "identity": identity, "n_parts": n_parts}
        temporary = manifest.with_name(f".manifest.json.tmp-{uuid.uuid4().hex[:12]}")
        with open(temporary, "w") as file:
            file.write(json.dumps(content, indent=1))
            file.flush()
            os.fsync(file.fileno())
        try:
            # link() fails when the manifest exists: a run that started at the same time won, and open() compares
            # with its identity (the processes of one distributed run agree, a different screen is refused).
            os.link(temporary, manifest)
        except FileExistsError:
            pass
        finally:
            temporary.unlink(missing_ok=True)

    def _clean_temporary_parts(self) -> None:
        """Remove the temporary part files a killed run left (only our own temporary names).

        Files touched in the last minutes are kept: they may be parts being written by the other processes of a
        distributed run that started together with this one.
        """
        import time

        stale = time.time() - STALE_TEMPORARY_S
        for leftover in (self.path / "parts").glob(".part-*.parquet.tmp-*"):
            try:
                if leftover.stat().st_mtime < stale:
                    leftover.unlink()
            except FileNotFoundError:
                pass

    @property
    def run_id(self) -> str:
        """The run's identity: sha256 of its manifest (recorded with its results, checked when they are read)."""
        return hashlib.sha256(json.dumps(self.manifest, sort_keys=True).encode()).hexdigest()[:16]

    def part_path(self, part: int) -> Path:
        return self.path / "parts" / f"part-{part:06d}.parquet"

    def done_parts(self) -> set[int]:
        """Parts whose results are complete."""
        return {int(p.stem.split("-")[1]) for p in (self.path / "parts").glob("part-*.parquet")}

    @property
    def complete(self) -> bool:
        return len(self.done_parts()) == self.manifest["n_parts"]

    def write_part(self, part: int, table: pd.DataFrame) -> None:
        """Write one part's result rows (atomically: the file appears complete or not at all)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        arrow = pa.Table.from_pandas(table, preserve_index=False)
        with atomic_path(self.part_path(part)) as temporary:
            pq.write_table(arrow, temporary)

    # -- reading ------------------------------------------------------------------------------------------------
    def iter_parts(self, columns: Sequence[str] | None = None, *, cell_rows: bool = False) -> Iterator[pd.DataFrame]:
        """Each part's rows, in part order (the order of an in-memory run); only ``columns`` if given.

        With ``cell_rows``, only the rows of whole cells (``affected == "cell"``).
        """
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        wanted = None if columns is None else list(dict.fromkeys([*columns, *(["affected"] if cell_rows else [])]))
        for part in range(self.manifest["n_parts"]):
            path = self.part_path(part)
            if not path.is_file():
                msg = f"Part {part} of {self.path} is missing: the run did not finish; re-run it to complete it."
                raise FileNotFoundError(msg)
            table = pq.read_table(path, columns=wanted)
            if cell_rows:
                table = table.filter(pc.equal(table["affected"], "cell"))
                if columns is not None and "affected" not in columns:
                    table = table.drop_columns(["affected"])
            yield table.to_pandas()

    def read(self, columns: Sequence[str] | None = None, *, cell_rows: bool = False) -> pd.DataFrame:
        """All parts' rows as one table (names as categoricals); with ``cell_rows`` only the cells' rows."""
        import pandas as pd

        frames = list(self.iter_parts(columns, cell_rows=cell_rows))
        for frame in frames:
            for column in NAME_COLUMNS:
                if column in frame:
                    frame[column] = frame[column].astype(str)
        table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
        for column in NAME_COLUMNS:
            if column in table:
                table[column] = table[column].astype("category")
        return table

    @property
    def n_rows(self) -> int:
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(self.part_path(p)).metadata.num_rows for p in sorted(self.done_parts()))

    def write_summary(self, summary: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        with atomic_path(self.path / "summary.parquet") as temporary:
            pq.write_table(pa.Table.from_pandas(summary, preserve_index=False), temporary)

    def __repr__(self) -> str:
        return f"PerturbationStore({str(self.path)!r}, {len(self.done_parts())} of {self.manifest['n_parts']} parts)"


def grouped_sums(
    parts: Iterator[pd.DataFrame], keys: list[str], values: Sequence[str], *, squares: bool = False, first=()
) -> pd.DataFrame | None:
    """Totals per group of ``keys`` over all ``parts``, one part in memory at a time.

    Columns: ``_n`` (rows), ``{value}_sum`` (float64; with ``squares`` also ``{value}_sumsq``), ``_first`` (the
    group's first row over all parts) and the first value of each ``first`` column. Groups are in order of first
    appearance, as an in-memory ``groupby(sort=False)`` gives them. ``None`` without parts.
    """
    import pandas as pd

    how = {"_n": "sum", "_first": "min", **dict.fromkeys(first, "first")}
    totals, offset = None, 0
    for part in parts:
        columns = {"_n": np.ones(len(part), dtype=np.int64), "_first": np.arange(offset, offset + len(part))}
        offset += len(part)
        for value in values:
            x = part[value].to_numpy(dtype=np.float64)
            columns[f"{value}_sum"] = x
            how[f"{value}_sum"] = "sum"
            if squares:
                columns[f"{value}_sumsq"] = x**2
                how[f"{value}_sumsq"] = "sum"
        frame = part[[*keys, *first]].assign(**columns)
        grouped = frame.groupby(keys, sort=False).agg(how)
        # earlier parts first: a group keeps the place of its first appearance
        totals = grouped if totals is None else pd.concat([totals, grouped]).groupby(level=keys, sort=False).agg(how)
    return totals
