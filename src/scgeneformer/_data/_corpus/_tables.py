"""Arrow and Parquet files read a row group (or record batch) at a time, as tokenized datasets are stored."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def table_files(folder: Path) -> list[Path]:
    """The Parquet files of ``folder`` in name order, else its Arrow files (a ``datasets`` folder)."""
    return sorted(folder.glob("*.parquet")) or sorted(folder.glob("*.arrow"))


class TableFile:
    """Row groups of a Parquet file, or record batches of a (memory-mapped) Arrow IPC file or stream."""

    def __init__(self, path: Path) -> None:
        import pyarrow as pa

        self.path = path
        if path.suffix == ".arrow":
            source = pa.memory_map(str(path))
            try:
                table = pa.ipc.open_stream(source).read_all()  # Hugging Face datasets write Arrow streams
            except pa.ArrowInvalid:
                table = pa.ipc.open_file(source).read_all()
            self.batches = table.to_batches()
            self.schema = table.schema
            self.parquet = None
        else:
            import pyarrow.parquet as pq

            self.parquet = pq.ParquetFile(path)
            self.schema = self.parquet.schema_arrow

    @property
    def n_groups(self) -> int:
        """Row groups (Parquet) or record batches (Arrow)."""
        return self.parquet.num_row_groups if self.parquet is not None else len(self.batches)

    def read(self, group: int, columns: list[str]):
        """The ``columns`` of row group ``group`` as a :class:`pyarrow.Table`."""
        import pyarrow as pa

        if self.parquet is not None:
            return self.parquet.read_row_group(group, columns=columns)
        return pa.Table.from_batches([self.batches[group]]).select(columns)

    def close(self) -> None:
        """Close the Parquet file (memory-mapped Arrow data are released with the object)."""
        if self.parquet is not None:
            self.parquet.close()


def is_list(arrow_type) -> bool:
    """Whether a column of ``arrow_type`` holds lists (e.g. token sequences) rather than one value per row."""
    import pyarrow as pa

    return pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)


def list_lengths(column) -> np.ndarray:
    """Length of each list in a list column."""
    import pyarrow.compute as pc

    return pc.list_value_length(column).to_numpy(zero_copy_only=False)


def list_column(column) -> tuple[np.ndarray, np.ndarray]:
    """A list column as ``(flat int32 values, offsets)``: row i holds ``flat[offsets[i]:offsets[i + 1]]``."""
    column = column.combine_chunks()
    offsets = column.offsets.to_numpy().astype(np.int64)
    flat = column.values.to_numpy(zero_copy_only=False).astype(np.int32)
    return flat[offsets[0] : offsets[-1]], offsets - offsets[0]
