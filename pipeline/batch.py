"""Batch scoring: CSV or Parquet in, probability and label out, in chunks with bounded memory."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline import files
from pipeline.tables import TableError, check_file, csv_header, feature_matrix, file_format, read_blocks

OUTPUTS = ("probability", "label")


@dataclass(frozen=True)
class Rows:
    """Rows of the input, the number of the first (as a reader of the file counts), and progress."""

    frame: pd.DataFrame
    first_row: int
    done: int  # bytes read (CSV) or rows read (Parquet), against InputFile.total


@dataclass(frozen=True)
class InputFile:
    """An input file's format, columns and size for the progress bar."""

    path: Path
    format: str
    columns: tuple[str, ...]
    total: int


def open_input(path: Path) -> InputFile:
    """Read only the header or the Parquet footer: columns and size, no rows."""
    fmt = check_file(path)
    if fmt == "csv":
        return InputFile(path, fmt, tuple(csv_header(path)), path.stat().st_size)
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise TableError(f"{path}: not a Parquet file: {exc}") from None
    return InputFile(path, fmt, tuple(meta.schema.names), meta.num_rows)


def read_chunks(source: InputFile, columns: list[str], features: tuple[str, ...], rows: int) -> Iterator[Rows]:
    """The needed columns, `rows` at a time, through the reader prepare uses (features parsed as numbers)."""
    numbers = [c for c in columns if c in features]
    for block in read_blocks(source.path, list(source.columns), columns, numbers, rows, {}):
        yield Rows(block.batch.to_pandas(), block.first_row, block.done)


def score_file(
    predict: Callable[[pd.DataFrame], pd.DataFrame],
    features: tuple[str, ...],
    source: InputFile,
    out: Path,
    rows: int,
    keep: tuple[str, ...] = (),
    on_chunk: Callable[[Rows], None] = lambda chunk: None,
) -> int:
    """Score every row of `source` into `out` (atomically); returns the number of rows."""
    needed = list(dict.fromkeys([*keep, *features]))
    missing = [c for c in needed if c not in source.columns]
    if missing:
        raise ValueError(f"{source.path}: missing column(s) {missing}; the model takes {list(features)}")
    writer = _csv_writer if file_format(out) == "csv" else _parquet_writer
    n = 0
    with files.replacing(out) as tmp, writer(tmp) as write:
        for chunk in read_chunks(source, needed, features, rows):
            try:
                X = feature_matrix(chunk.frame, features, chunk.first_row)
            except TableError as exc:
                raise TableError(f"{source.path}, {exc}") from None
            scored = predict(pd.DataFrame(X, columns=list(features)))[list(OUTPUTS)]
            passed = chunk.frame[list(keep)].reset_index(drop=True)
            write(pd.concat([passed, scored], axis=1))
            n += len(scored)
            on_chunk(chunk)
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
