"""Batch scoring: CSV or Parquet in, probability and label out, in chunks with bounded memory."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline import files
from pipeline.tables import (
    Block,
    TableError,
    check_file,
    csv_header,
    feature_matrix,
    file_format,
    parquet_metadata,
    read_blocks,
)

OUTPUTS = ("probability", "label")


@dataclass(frozen=True)
class InputFile:
    """An input file's columns and size for the progress bar."""

    path: Path
    columns: tuple[str, ...]
    total: int


def open_input(path: Path) -> InputFile:
    """Read only the header or the Parquet footer: columns and size, no rows."""
    if check_file(path) == "csv":
        return InputFile(path, tuple(csv_header(path)), path.stat().st_size)
    meta = parquet_metadata(path)
    return InputFile(path, tuple(meta.schema.names), meta.num_rows)


def score_file(
    predict: Callable[[pd.DataFrame], pd.DataFrame],
    features: tuple[str, ...],
    source: InputFile,
    out: Path,
    rows: int,
    keep: tuple[str, ...] = (),
    on_chunk: Callable[[Block], None] = lambda block: None,
) -> int:
    """Score every row of `source` into `out` (atomically); returns the number of rows."""
    needed = list(dict.fromkeys([*keep, *features]))
    missing = [c for c in needed if c not in source.columns]
    if missing:
        raise ValueError(f"{source.path}: missing column(s) {missing}; the model takes {list(features)}")
    writer = _csv_writer if file_format(out) == "csv" else _parquet_writer
    n = 0
    with files.replacing(out) as tmp, writer(tmp) as write:
        # The reader prepare uses, the features parsed as numbers.
        for block in read_blocks(source.path, list(source.columns), needed, list(features), rows, {}):
            frame = block.batch.to_pandas()
            try:
                X = feature_matrix(frame, features, block.first_row)
            except TableError as exc:
                raise TableError(f"{source.path}, {exc}") from None
            scored = predict(pd.DataFrame(X, columns=list(features)))[list(OUTPUTS)]
            passed = frame[list(keep)].reset_index(drop=True)
            write(pd.concat([passed, scored], axis=1))
            n += len(scored)
            on_chunk(block)
        if n == 0:  # still a valid file, with the columns a reader expects
            empty = {"probability": pd.Series(dtype="float64"), "label": pd.Series(dtype="int64")}
            write(pd.DataFrame({**{k: pd.Series(dtype="float64") for k in keep}, **empty}))
    return n


@contextlib.contextmanager
def _csv_writer(path: Path) -> Iterator[Callable[[pd.DataFrame], None]]:
    """Append frames to one CSV, header first."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        header = [True]

        def write(frame: pd.DataFrame) -> None:
            frame.to_csv(fh, header=header[0], index=False)
            header[0] = False

        yield write


@contextlib.contextmanager
def _parquet_writer(path: Path) -> Iterator[Callable[[pd.DataFrame], None]]:
    """Append frames to one Parquet file, a row group each."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writers: list[Any] = []

    def write(frame: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if not writers:
            writers.append(pq.ParquetWriter(path, table.schema))
        writers[0].write_table(table)

    try:
        yield write
    finally:
        for w in writers:
            w.close()
