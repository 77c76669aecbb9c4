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

    def group_rows(self, group: int) -> int:
        """Rows of row group (record batch) ``group``, from the metadata."""
        if self.parquet is not None:
            return self.parquet.metadata.row_group(group).num_rows
        return self.batches[group].num_rows

    def read(self, group: int, columns: list[str]):
        """The ``columns`` of row group ``group`` as a :class:`pyarrow.Table`."""
        import pyarrow as pa

        if self.parquet is not None:
            return self.parquet.read_row_group(group, columns=columns)
        return pa.Table.from_batches([self.batches[group]]).select(columns)

    def head(self, columns: list[str], n_rows: int):
        """The ``columns`` of the first ``n_rows`` rows of the file (at most), read without reading whole groups."""
        import pyarrow as pa

        if self.parquet is not None:
            batches = self.parquet.iter_batches(batch_size=n_rows, columns=columns)
            first = next(batches, None)
            return pa.Table.from_batches([first]) if first is not None else self.schema.empty_table().select(columns)
        return pa.Table.from_batches(self.batches, schema=self.schema).slice(0, n_rows).select(columns)

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


def is_numeric_list(arrow_type) -> bool:
    """Whether ``arrow_type`` is a list of integers or floating-point numbers (token ids as written by some tools)."""
    import pyarrow as pa

    value = arrow_type.value_type if is_list(arrow_type) else None
    return value is not None and (pa.types.is_integer(value) or pa.types.is_floating(value))


def list_column(column) -> tuple[np.ndarray, np.ndarray, int]:
    """A list column as ``(flat values, offsets, missing)``: row i holds ``flat[offsets[i]:offsets[i + 1]]``.

    The values keep their type (no conversion, so that the caller can check them first); ``missing`` counts the
    missing rows and values.
    """
    column = column.combine_chunks()
    missing = column.null_count
    offsets = column.offsets.to_numpy().astype(np.int64)
    values = column.values.slice(offsets[0], offsets[-1] - offsets[0])
    missing += values.null_count
    return values.to_numpy(zero_copy_only=False), offsets - offsets[0], missing
