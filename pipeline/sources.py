"""Where rows come from, in bounded chunks: CSV and Parquet files, a seeded synthetic table, scikit-learn's data."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.table_files import check_file, dataset_files, location
from pipeline.tables import (
    Location,
    TableError,
    check_header,
    csv_header,
    file_format,
    float32_rows,
    parquet_metadata,
    read_ahead,
    read_blocks,
)

BUILTIN_SOURCES = ("breast_cancer",)
SYNTHETIC = "synthetic"
CHUNK_ROWS = 1 << 16  # rows per chunk for generated and Parquet data (CSV: pieces of 16 MiB)
LABEL_HINT = "; labels must be 0 or 1 (or set prepare.positive to the value that means 1)"


@dataclass(frozen=True)
class Chunk:
    """Consecutive rows: float32 features, float32 labels, and the number of the first as its file counts it."""

    X: np.ndarray
    y: np.ndarray
    first_row: int
    where: str = ""  # the file the rows are from, when the source is several files ("": the source itself)


@dataclass(frozen=True)
class Source:
    """A table's names and a way to stream its rows; nothing is read until chunks() is iterated."""

    origin: str
    label: str
    features: tuple[str, ...]
    chunks: Callable[[], Iterator[Chunk]]
    rows: int | None = None  # how many rows chunks() gives, where a file's footer says it before reading
    parts: tuple[Source, ...] = ()  # a dataset's files, each a Source, in order; (): the source is one part


def open_source(
    source: str,
    label: str,
    features: list[str] | None,
    n_samples: int,
    n_features: int,
    seed: int,
    positive: str | None,
) -> Source:
    """A CSV or Parquet file, a Parquet dataset (a folder or glob of files), `synthetic`, or a bundled dataset.

    `positive`: the label value meaning 1.
    """
    if positive is not None and source in (SYNTHETIC, *BUILTIN_SOURCES):
        raise TableError(f"prepare.positive: {source}'s labels are 0/1 already; set it for CSV or Parquet sources")
    if source == SYNTHETIC:
        return synthetic(n_samples, n_features, seed, label)
    if source in BUILTIN_SOURCES:
        return builtin(source, label)
    parts = dataset_files(source)
    if parts is not None:
        return parquet_dataset(source, parts, label, features, positive)
    path = location(source)
    try:
        file_format(path)
    except TableError:
        known = ", ".join((*BUILTIN_SOURCES, SYNTHETIC))
        raise TableError(
            f"{path}: prepare.source must be a .csv or .parquet file, a folder or glob of .parquet files "
            f"(on a local disk, or by URI such as s3://bucket/prefix/), or one of {known}"
        ) from None
    read = csv_source if check_file(path) == "csv" else parquet_source
    return read(path, label, features, positive)


def _columns(where: str, header: list[str], label: str, features: list[str] | None) -> tuple[str, ...]:
    """The feature columns: as given, or every column but the label in file order; checked against the header."""
    if label not in header:
        raise TableError(f"{where}: label column {label!r} not in header {header}")
    chosen = [h for h in header if h != label] if features is None else list(features)
    missing = [f for f in chosen if f not in header]
    if missing:
        raise TableError(f"{where}: prepare.features {missing} not in header {header}")
    if not chosen:
        raise TableError(f"{where}: no feature columns besides the label {label!r}")
    if label in chosen:
        raise TableError(f"{where}: the label {label!r} cannot also be a feature")
    return tuple(chosen)


# ---------------------------------------------------------------- CSV
def csv_source(path: Path, label: str, features: list[str] | None, positive: str | None) -> Source:
    """A CSV with a header row, parsed by pyarrow in blocks (multi-threaded, bounded memory)."""
    header = csv_header(path)
    return _file_source(path, header, _columns(str(path), header, label, features), label, positive)


def _file_source(
    path: Location, header: list[str], chosen: tuple[str, ...], label: str, positive: str | None
) -> Source:
    """Rows of a CSV or Parquet file through the one reader (pipeline.tables), as float32 chunks."""
    numbers = [*chosen] if positive is not None else [label, *chosen]  # with `positive`, the label is text
    hints = {} if positive is not None else {label: LABEL_HINT}
    rows = CHUNK_ROWS if file_format(path) == "parquet" else None  # a CSV: as parsed, 16 MiB at a time

    def parsed() -> Iterator[Chunk]:
        for block in read_blocks(path, header, [label, *chosen], numbers, rows, hints):
            y = _labels(block.batch.column(label), positive)
            X = float32_rows(block.batch, list(chosen), str(path), block.first_row)  # NaN: missing
            yield Chunk(X, y, block.first_row, str(path))

    def chunks() -> Iterator[Chunk]:  # the next chunk parsed while prepare checks and writes this one
        return read_ahead(parsed())

    return Source(str(path), label, chosen, chunks)


def _labels(labels: Any, positive: str | None) -> np.ndarray:
    """float32 labels of an arrow column; nulls become NaN (refused or dropped later, by row)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if positive is not None:  # the label as text, trimmed: `positive` is 1, any other value 0, null or empty missing
        text = pc.utf8_trim_whitespace(pc.cast(labels, pa.string()))
        missing = pc.or_kleene(pc.is_null(text), pc.equal(text, ""))  # Kleene: a null cell is missing, not null
        labels = pc.if_else(missing, pa.scalar(None, pa.bool_()), pc.equal(text, positive))
    # A one-column tensor, not Array.to_numpy, which imports pandas (slow, and prepare needs none of it)
    column = pa.RecordBatch.from_arrays([pc.cast(labels, pa.float32())], names=["y"])
    return np.asarray(column.to_tensor(null_to_nan=True)).reshape(-1)


# ---------------------------------------------------------------- Parquet
def parquet_source(path: Location, label: str, features: list[str] | None, positive: str | None) -> Source:
    """A Parquet file read one record batch at a time, only the needed columns."""
    import pyarrow as pa

    metadata = parquet_metadata(path)
    schema = metadata.schema.to_arrow_schema()
    header = check_header(str(path), list(schema.names))
    chosen = _columns(str(path), header, label, features)
    for name in chosen if positive is not None else (label, *chosen):
        kind = schema.field(name).type
        boolean_label = name == label and pa.types.is_boolean(kind)  # True is 1
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or boolean_label):
            raise TableError(f"{path}, column {name!r}: not numeric ({kind})")
    return dataclasses.replace(_file_source(path, header, chosen, label, positive), rows=metadata.num_rows)


def parquet_dataset(
    origin: str, parts: list[Location], label: str, features: list[str] | None, positive: str | None
) -> Source:
    """Several Parquet files as one table, files in name order: each read as parquet_source reads one file.

    Every file must give the same feature columns; a row is named by its file and its row there.
    """
    sources = [parquet_source(part, label, features, positive) for part in parts]
    for part, source in zip(parts[1:], sources[1:], strict=True):
        if source.features != sources[0].features:
            raise TableError(
                f"{part}: feature columns {list(source.features)} differ from {parts[0]}'s {list(sources[0].features)}"
            )

    def chunks() -> Iterator[Chunk]:
        for source in sources:
            yield from source.chunks()

    return Source(origin, label, sources[0].features, chunks, sum(s.rows for s in sources), tuple(sources))


# ---------------------------------------------------------------- generated and bundled
SYNTHETIC_BLOCK = 1 << 16  # rows per generator stream: row i comes from stream i // SYNTHETIC_BLOCK


def synthetic(n_samples: int, n_features: int, seed: int, label: str) -> Source:
    """A seeded logistic-model table: features with varied offsets and scales, labels drawn from the model.

    Row i is drawn by the generators (seed, i // SYNTHETIC_BLOCK), features and labels from separate
    streams, so every row is a function of the seed and its index alone: the same table whatever the
    chunk size it is read in, and whatever n_samples (a longer table extends a shorter one).
    """
    if n_samples < 2 or n_features < 1:
        raise TableError(f"synthetic: need n_samples >= 2 and n_features >= 1, got {n_samples} x {n_features}")
    rng = np.random.default_rng([seed, 2**32 - 1])
    loc = rng.normal(0, 2, n_features).astype(np.float32)
    scale = rng.uniform(0.5, 2.0, n_features).astype(np.float32)
    weights = (rng.normal(0, 1, n_features) * 2 / math.sqrt(n_features)).astype(np.float32)
    bias = np.float32(rng.normal(0, 0.5))
    names = tuple(f"x{j + 1}" for j in range(n_features))

    def block(b: int) -> tuple[np.ndarray, np.ndarray]:
        rows = min(SYNTHETIC_BLOCK, n_samples - b * SYNTHETIC_BLOCK)
        Z = np.random.default_rng([seed, b, 0]).standard_normal((rows, n_features), dtype=np.float32)
        draw = np.random.default_rng([seed, b, 1]).random(rows, dtype=np.float32)  # its own stream: see above
        p = 1 / (1 + np.exp(-(Z @ weights + bias)))
        return Z * scale + loc, (draw < p).astype(np.float32)

    def chunks() -> Iterator[Chunk]:
        cached: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for start in range(0, n_samples, CHUNK_ROWS):
            stop = min(n_samples, start + CHUNK_ROWS)
            X_parts, y_parts = [], []
            for b in range(start // SYNTHETIC_BLOCK, (stop - 1) // SYNTHETIC_BLOCK + 1):
                if b not in cached:
                    cached.clear()  # chunks move forward: one block in memory at a time
                    cached[b] = block(b)
                X, y = cached[b]
                lo, hi = max(start, b * SYNTHETIC_BLOCK), min(stop, (b + 1) * SYNTHETIC_BLOCK)
                X_parts.append(X[lo - b * SYNTHETIC_BLOCK : hi - b * SYNTHETIC_BLOCK])
                y_parts.append(y[lo - b * SYNTHETIC_BLOCK : hi - b * SYNTHETIC_BLOCK])
            yield Chunk(np.concatenate(X_parts), np.concatenate(y_parts), start + 1)

    return Source(f"synthetic({n_samples}x{n_features}, seed {seed})", label, names, chunks)


def builtin(name: str, label: str) -> Source:
    """A dataset bundled with scikit-learn (no download), as one chunk."""
    from sklearn.datasets import load_breast_cancer  # imported here: slow to import, seldom used

    bunch = load_breast_cancer()
    X, y = bunch.data.astype(np.float32), bunch.target.astype(np.float32)
    return Source(name, label, tuple(bunch.feature_names), lambda: iter([Chunk(X, y, 1)]))
