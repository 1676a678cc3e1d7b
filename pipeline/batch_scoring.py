"""Batch scoring (the predict command's computation): CSV or Parquet in, probability and label out, in chunks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import engines, files
from pipeline.table_files import check_file, dataset_files
from pipeline.tables import (
    Location,
    csv_header,
    file_format,
    float32_columns,
    parquet_metadata,
    read_ahead,
    read_blocks,
)


@dataclass(frozen=True)
class InputFile:
    """What predict scores: one CSV or Parquet file, or a Parquet dataset's files in name order; size for a bar."""

    path: Location
    columns: tuple[str, ...]
    total: int
    parts: tuple[Location, ...]  # the file itself, or the dataset's files


def open_input(path: Location) -> InputFile:
    """Read only the header or the Parquet footers: columns and size, no rows; a dataset's files must agree."""
    parts = dataset_files(str(path))
    if parts is None:
        if check_file(path) == "csv":
            return InputFile(path, tuple(csv_header(path)), path.stat().st_size, (path,))
        meta = parquet_metadata(path)
        return InputFile(path, tuple(meta.schema.names), meta.num_rows, (path,))
    footers = [parquet_metadata(part) for part in parts]
    columns = tuple(footers[0].schema.names)
    for part, footer in zip(parts[1:], footers[1:], strict=True):
        if tuple(footer.schema.names) != columns:
            raise ValueError(f"{part}: columns {list(footer.schema.names)} differ from {parts[0]}'s {list(columns)}")
    return InputFile(path, columns, sum(f.num_rows for f in footers), tuple(parts))


Score = Callable[[list[np.ndarray]], tuple[np.ndarray, np.ndarray]]  # float32 columns -> (probability, label)


def score_file(
    score: Score,
    features: tuple[str, ...],
    source: InputFile,
    out: Path,
    rows: int,
    keep: tuple[str, ...] = (),
    on_chunk: Callable[[int], None] = lambda done: None,
) -> int:
    """Score every row of `source` into `out` (atomically) in this process, `rows` at a time.

    Rows come out in input order (a dataset's files in name order), in one file. Arrow record batches all the
    way: pandas' frames and MLflow's per-column schema checks cost more than the scoring several times over
    (benchmarks/serving.py measures batch scoring); the checks are the shared validator's, so a bad cell gets
    the words prepare and the server give it, naming its file and row there. Returns the row count.
    """
    how = _Reading(source.columns, _needed(source, features, keep), features, keep, rows)

    def scored() -> Iterator[tuple[Any, int]]:
        before = 0  # how far the reading is through the dataset's earlier files
        for part in source.parts:
            done = 0
            for table, done in _scored_blocks(score, part, how):
                yield table, before + done
            before += done

    return _write(out, keep, read_ahead(scored()), on_chunk)  # the next block read while this one is written


def score_on_ray(
    score: Score,
    features: tuple[str, ...],
    source: InputFile,
    out: Path,
    rows: int,
    keep: tuple[str, ...],
    workers: int,
    on_chunk: Callable[[int], None] = lambda done: None,
) -> int:
    """score_file with each file of the input scored by a Ray task, `workers` at a time, written in input order.

    A task reads its own file with the same reader and validator and scores it with the same `score`: the
    same probabilities, bit for bit. Ray must be connected (pipeline.engines.ray_cluster).
    """
    how = _Reading(source.columns, _needed(source, features, keep), features, keep, rows)

    def scored() -> Iterator[tuple[Any, int]]:
        done = 0
        parts = [part if isinstance(part, str) else part.resolve() for part in source.parts]  # the same on every worker
        for table in engines.on_ray(workers)(_score_part, parts, score, how):
            done += table.num_rows
            yield table, done

    return _write(out, keep, scored(), on_chunk)


def _needed(source: InputFile, features: tuple[str, ...], keep: tuple[str, ...]) -> list[str]:
    """The input columns scoring reads: those kept, then the model's features; all must be there."""
    needed = list(dict.fromkeys([*keep, *features]))
    missing = [c for c in needed if c not in source.columns]
    if missing:
        raise ValueError(f"{source.path}: missing column(s) {missing}; the model takes {list(features)}")
    return needed


@dataclass(frozen=True)
class _Reading:
    """How one file of the input is read for scoring: its header, the columns read, the model's, those kept."""

    header: tuple[str, ...]
    needed: list[str]
    features: tuple[str, ...]
    keep: tuple[str, ...]
    rows: int  # per block


def _scored_blocks(score: Score, part: Location, how: _Reading) -> Iterator[tuple[Any, int]]:
    """One file's outputs block by block, with how far its reading is: the one scoring path of both engines."""
    columns = list(how.features)
    for block in read_blocks(part, list(how.header), how.needed, columns, how.rows, {}):  # features as numbers
        proba, label = score(float32_columns(block.batch, columns, str(part), block.first_row))
        yield _outputs(block.batch.select(list(how.keep)), proba, label), block.done


def _score_part(score: Score, how: _Reading, part: Location) -> Any:
    """A Ray task: one file's outputs as one Arrow table."""
    import pyarrow as pa

    tables = [table for table, _ in _scored_blocks(score, part, how)]
    return pa.concat_tables(tables) if tables else _outputs(_empty(how.keep), np.empty(0), np.empty(0, dtype=np.int64))


def _write(out: Path, keep: tuple[str, ...], tables: Iterator[tuple[Any, int]], on_chunk: Callable[[int], None]) -> int:
    """The output tables to `out` in order, atomically (nothing if any fails); returns the rows written."""
    writer = _csv_writer if file_format(out) == "csv" else _parquet_writer
    n = 0
    with files.replacing(out) as tmp, writer(tmp) as write:
        for table, done in tables:
            write(table)
            n += table.num_rows
            on_chunk(done)
        if n == 0:  # still a valid file, with the columns a reader expects
            write(_outputs(_empty(keep), np.empty(0), np.empty(0, dtype=np.int64)))
    return n


def _outputs(kept: Any, proba: np.ndarray, label: np.ndarray) -> Any:
    """The kept input columns, then probability (float64) and label (int64), as an Arrow table."""
    import pyarrow as pa

    columns = {name: kept.column(name) for name in kept.schema.names}
    return pa.table({**columns, "probability": proba.astype(np.float64), "label": label.astype(np.int64)})


def _empty(keep: tuple[str, ...]) -> Any:
    """No rows of the kept columns (float64, as an empty CSV gives no types)."""
    import pyarrow as pa

    return pa.table({name: pa.array([], pa.float64()) for name in keep})


@contextlib.contextmanager
def _csv_writer(path: Path) -> Iterator[Callable[[Any], None]]:
    """Append tables to one CSV, header first; pandas writes the numbers (shortest round-trip text)."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        header = [True]

        def write(table: Any) -> None:
            table.to_pandas().to_csv(fh, header=header[0], index=False)
            header[0] = False

        yield write


@contextlib.contextmanager
def _parquet_writer(path: Path) -> Iterator[Callable[[Any], None]]:
    """Append tables to one Parquet file, a row group each."""
    import pyarrow.parquet as pq

    writers: list[Any] = []

    def write(table: Any) -> None:
        if not writers:
            # Not a dictionary of probabilities: pyarrow tries one on each block's distinct floats and gives it up,
            # which more than doubles the time of writing, for a larger file.
            encoded = [name for name in table.schema.names if name != "probability"]
            writers.append(pq.ParquetWriter(path, table.schema, use_dictionary=encoded))
        writers[0].write_table(table)

    try:
        yield write
    finally:
        for w in writers:
            w.close()
