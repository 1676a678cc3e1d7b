"""Where rows come from, in bounded chunks: CSV and Parquet files, a seeded synthetic table, scikit-learn's data."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BUILTIN_SOURCES = ("breast_cancer",)
SYNTHETIC = "synthetic"
CHUNK_ROWS = 1 << 16  # rows per chunk for generated and Parquet data (CSV: pyarrow's 16 MiB blocks)
CSV_BLOCK_BYTES = 16 << 20


class DataError(ValueError):
    """Input data that cannot be used; the message names the file, row and column."""


@dataclass(frozen=True)
class Chunk:
    """Consecutive rows: float32 features, float32 labels, and the number of the first as its file counts it."""

    X: np.ndarray
    y: np.ndarray
    first_row: int


@dataclass(frozen=True)
class Source:
    """A table's names and a way to stream its rows; nothing is read until chunks() is iterated."""

    origin: str
    label: str
    features: tuple[str, ...]
    chunks: Callable[[], Iterator[Chunk]]


FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def file_format(path: Path) -> str:
    """The format ("csv" or "parquet") named by the file extension."""
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise ValueError(f"{path}: unknown file type; use one of {', '.join(FORMATS)}") from None


def open_source(
    source: str, label: str, features: list[str] | None, n_samples: int, n_features: int, seed: int
) -> Source:
    """A CSV or Parquet path, `synthetic`, or a bundled scikit-learn dataset."""
    if source == SYNTHETIC:
        return synthetic(n_samples, n_features, seed, label)
    if source in BUILTIN_SOURCES:
        return builtin(source, label)
    path = Path(source)
    if path.suffix.lower() not in FORMATS:
        known = ", ".join((*BUILTIN_SOURCES, SYNTHETIC))
        raise DataError(f"{path}: data.source must be a .csv or .parquet file, or one of {known}")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    read = csv_source if file_format(path) == "csv" else parquet_source
    return read(path, label, features)


def _columns(where: str, header: list[str], label: str, features: list[str] | None) -> tuple[str, ...]:
    """The feature columns: as given, or every column but the label in file order; checked against the header."""
    if len(set(header)) != len(header) or "" in header:
        raise DataError(f"{where}: header has empty or duplicate column names: {header}")
    if label not in header:
        raise DataError(f"{where}: label column {label!r} not in header {header}")
    chosen = [h for h in header if h != label] if features is None else list(features)
    missing = [f for f in chosen if f not in header]
    if missing:
        raise DataError(f"{where}: data.features {missing} not in header {header}")
    if not chosen:
        raise DataError(f"{where}: no feature columns besides the label {label!r}")
    if label in chosen:
        raise DataError(f"{where}: the label {label!r} cannot also be a feature")
    return tuple(chosen)


# ---------------------------------------------------------------- CSV
def csv_header(path: Path) -> list[str]:
    """The column names of a CSV's first line, stripped; an empty file is an error."""
    with path.open(newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh), None)
    if not header:
        raise DataError(f"{path}: empty file, expected a header row")
    return [h.strip() for h in header]


def csv_source(path: Path, label: str, features: list[str] | None) -> Source:
    """A CSV with a header row, parsed by pyarrow in blocks (multi-threaded, bounded memory)."""
    header = csv_header(path)
    chosen = _columns(str(path), header, label, features)

    def chunks() -> Iterator[Chunk]:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        names = [label, *chosen]
        convert = pacsv.ConvertOptions(column_types={n: pa.float64() for n in names}, include_columns=names)
        read = pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES, column_names=header, skip_rows=1)
        first = 2  # line 1 is the header
        try:
            for batch in pacsv.open_csv(path, read_options=read, convert_options=convert):
                y, X = _arrays(batch, names)
                yield Chunk(X, y, first)
                first += len(y)
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
            raise DataError(first_bad_cell(path, header, names) or f"{path}: {exc}") from None

    return Source(str(path), label, chosen, chunks)


def _arrays(batch: object, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and float32 features of a record batch; nulls become NaN (refused later, by row)."""
    columns = [batch.column(name).to_numpy(zero_copy_only=False) for name in names]  # type: ignore[attr-defined]
    X = np.empty((len(columns[0]), len(columns) - 1), dtype=np.float32)
    for j, column in enumerate(columns[1:]):
        X[:, j] = column
    return columns[0].astype(np.float32), X


def first_bad_cell(path: Path, header: list[str], names: list[str]) -> str | None:
    """Find the first cell pyarrow refused, with Python's csv, to name its row and column."""
    wanted = [header.index(n) for n in names]
    with path.open(newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        next(reader, None)
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                return f"{path}, row {line_no}: expected {len(header)} columns, got {len(row)}"
            for j in wanted:
                cell = row[j].strip()
                try:
                    float(cell)
                except ValueError:
                    if cell:  # empty cells are nulls: refused as missing values later
                        return f"{path}, row {line_no}, column {header[j]!r}: not a number: {cell!r}"
    return None


# ---------------------------------------------------------------- Parquet
def parquet_source(path: Path, label: str, features: list[str] | None) -> Source:
    """A Parquet file read one record batch at a time, only the needed columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a Parquet file: {exc}") from None
    chosen = _columns(str(path), list(schema.names), label, features)
    for name in (label, *chosen):
        kind = schema.field(name).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
            raise DataError(f"{path}, column {name!r}: not numeric ({kind})")

    def chunks() -> Iterator[Chunk]:
        names = [label, *chosen]
        first = 1
        # pre_buffer (the default) keeps every row group read so far in memory: off, to stay bounded.
        for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=CHUNK_ROWS, columns=names):
            y, X = _arrays(batch, names)
            yield Chunk(X, y, first)
            first += len(y)

    return Source(str(path), label, chosen, chunks)


# ---------------------------------------------------------------- generated and bundled
SYNTHETIC_BLOCK = 1 << 16  # rows per generator stream: row i comes from stream i // SYNTHETIC_BLOCK


def synthetic(n_samples: int, n_features: int, seed: int, label: str) -> Source:
    """A seeded logistic-model table: features with varied offsets and scales, labels drawn from the model.

    Row i is drawn by the generators (seed, i // SYNTHETIC_BLOCK), features and labels from separate
    streams, so every row is a function of the seed and its index alone: the same table whatever the
    chunk size it is read in, and whatever n_samples (a longer table extends a shorter one).
    """
    if n_samples < 2 or n_features < 1:
        raise DataError(f"synthetic: need n_samples >= 2 and n_features >= 1, got {n_samples} x {n_features}")
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
    from sklearn.datasets import load_breast_cancer  # imported here: costs ~1 s

    bunch = load_breast_cancer()
    X, y = bunch.data.astype(np.float32), bunch.target.astype(np.float32)
    return Source(name, label, tuple(bunch.feature_names), lambda: iter([Chunk(X, y, 1)]))
