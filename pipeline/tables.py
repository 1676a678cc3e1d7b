"""One reader and one validator for every table the pipeline reads: files for prepare and batch scoring, bodies.

A bad cell gets the same words wherever it is found: `<file or request>, row R, column 'C': <problem>`.
"""

from __future__ import annotations

import csv
import itertools
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import numpy as np

if TYPE_CHECKING:  # pandas is slow to import: prepare never needs it
    import pandas as pd

FLOAT32_MAX = float(np.finfo(np.float32).max)  # the model computes in float32
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
CSV_BLOCK_BYTES = 16 << 20  # a CSV is parsed in pieces of about this many bytes, one per core at a time
PARQUET_BUFFER_BYTES = 1 << 18  # what pyarrow reads of each Parquet column at a time (0 would be a whole row group)
DELIMITERS = (";", "\t", "|")  # what a one-column header holding one of these was probably separated by
T = TypeVar("T")
Location = Path | str  # a local file, or a URI pyarrow opens (pipeline.table_files finds and checks them)


class TableError(ValueError):
    """A table that cannot be used; the message names the file (or request), row and column."""


def file_format(path: Location) -> str:
    """The format ("csv" or "parquet") named by the file extension."""
    suffix = PurePosixPath(urlsplit(path).path).suffix if isinstance(path, str) else path.suffix
    try:
        return FORMATS[suffix.lower()]
    except KeyError:
        raise TableError(f"{path}: unknown file type; use one of {', '.join(FORMATS)}") from None


def csv_header(path: Path) -> list[str]:
    """The column names of a CSV's first line (UTF-8, a byte-order mark dropped), checked."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh), None)
    except UnicodeDecodeError as exc:
        raise TableError(
            f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); save it as UTF-8"
        ) from None
    if not header:
        raise TableError(f"{path}: empty file, expected a header row")
    header = [h.strip() for h in header]
    if len(header) == 1 and (sep := next((d for d in DELIMITERS if d in header[0]), None)):
        raise TableError(f"{path}: one column {header[0]!r}: the file looks {sep!r}-separated; save it with commas")
    return check_header(str(path), header)


def check_header(where: str, header: list[str]) -> list[str]:
    """Column names that are all there and distinct."""
    if len(set(header)) != len(header) or "" in header:
        raise TableError(f"{where}: header has empty or duplicate column names: {header}")
    return header


def parquet_metadata(path: Location) -> Any:
    """A Parquet file's footer (schema, row count), read without its rows; an error if it is not Parquet."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata
    except OSError as exc:  # a store out of reach, a request refused, a file not readable
        raise TableError(f"{path}: cannot read: {exc}") from None
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise TableError(f"{path}: not a Parquet file: {exc}") from None


@dataclass(frozen=True)
class Block:
    """Consecutive rows of a file (a pyarrow RecordBatch) and how far the reading is (bytes or rows).

    first_row numbers the first as a reader of the file counts: a CSV's line (the header is line 1), a
    Parquet row from 1.
    """

    batch: Any
    first_row: int
    done: int


def read_blocks(
    path: Location, header: list[str], columns: list[str], numbers: list[str], rows: int | None, hints: dict[str, str]
) -> Iterator[Block]:
    """`columns` of a CSV or Parquet file, at most `rows` rows a block (None: as parsed), bounded memory.

    In a CSV the `numbers` columns are parsed as float64 (an empty cell is null) and the others as
    pyarrow infers them; a cell that is not a number stops the reading with a TableError naming its
    row and column (plus `hints[column]`). Parquet columns come as stored.
    """
    import pyarrow as pa

    if file_format(path) == "parquet":
        first = 1
        try:
            for batch in _parquet_batches(path, rows or 1 << 16, columns):
                yield Block(batch, first, first - 1 + len(batch))
                first += len(batch)
        except OSError as exc:  # a store out of reach mid-file, a file cut short
            raise TableError(f"{path}: cannot read after row {first - 1}: {exc}") from None
        return
    first = 2
    try:
        for batch, done in _parsed_csv(path, header, columns, numbers):
            for start in range(0, len(batch), rows or len(batch) or 1):
                part = batch.slice(start, rows) if rows else batch
                yield Block(part, first, done)
                first += len(part)
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise TableError(first_bad_csv_cell(path, header, numbers, hints) or f"{path}: {exc}") from None


def _parquet_batches(path: Location, rows: int, columns: list[str]) -> Iterator[Any]:
    """A Parquet file's `columns` in record batches of `rows` rows (the last shorter), about a row group held."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(path, str):
        # On an object store a read is a request of milliseconds: each row group's column chunks are fetched in a
        # few large concurrent requests (pre_buffer), by a reader of its own, since one reader's pre-buffering
        # holds every row group read so far. Cut into the local reader's batches: the blocks prepare sums its
        # statistics over, and so the prepared bits, do not depend on where the file is.
        footer = pq.ParquetFile(path).metadata
        groups = (
            pq.ParquetFile(path, pre_buffer=True, metadata=footer).iter_batches(rows, row_groups=[i], columns=columns)
            for i in range(footer.num_row_groups)
        )
        held: list[Any] = []  # slices of batches read, fewer than `rows` rows in all
        for batch in itertools.chain.from_iterable(groups):
            while batch.num_rows:
                take = min(rows - sum(map(len, held)), batch.num_rows)
                held.append(batch.slice(0, take))
                batch = batch.slice(take)
                if sum(map(len, held)) == rows:
                    yield pa.concat_batches(held)
                    held = []
        if held:
            yield pa.concat_batches(held)
        return
    # Locally, pre_buffer (the default) would keep every row group read so far in memory: off, to stay bounded.
    # Without a buffer_size each column's whole chunk of the row group is read at once (a row group pandas writes
    # holds 1Mi rows); streamed through small buffers, the peak is about halved in the same time.
    parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=PARQUET_BUFFER_BYTES)
    yield from parquet.iter_batches(batch_size=rows, columns=columns)


def _csv_pieces(path: Path) -> Iterator[tuple[memoryview, int]]:
    """A CSV's lines (the header first) in pieces of about CSV_BLOCK_BYTES, each cut at a line's end.

    With the offset each piece ends at. Cut at a line end (LF or CR), a piece parses on its own, as
    pyarrow's own parallel reader takes it when values hold no line breaks (ParseOptions' default).
    """
    with path.open("rb") as fh:
        done, rest = 0, b""
        while data := fh.read(CSV_BLOCK_BYTES):
            data = rest + data
            cut = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
            rest = data[cut:]
            if cut:
                done += cut
                yield memoryview(data)[:cut], done
        if rest:
            yield memoryview(rest), done + len(rest)


def _parsed_csv(path: Path, header: list[str], columns: list[str], numbers: list[str]) -> Iterator[tuple[Any, int]]:
    """The pieces of _csv_pieces as record batches in file order, parsed on up to one thread per core.

    pyarrow's streaming reader parses on one core however many there are (user time equal to wall time);
    these pieces, one per core at a time in 1 MiB blocks, use them all. The columns
    not forced to numbers are typed from the first piece, as the streaming reader types from its first block.
    """
    import pyarrow as pa

    pieces = _csv_pieces(path)
    head = next(pieces, None)
    if head is None:
        return
    batch = _parse_csv(head[0], header, columns, {name: pa.float64() for name in numbers}, skip_rows=1)
    yield batch, head[1]
    types = {field.name: field.type for field in batch.schema}
    workers = max(1, min(8, os.cpu_count() or 1))  # a piece in flight costs about twice its bytes
    with ThreadPoolExecutor(workers, thread_name_prefix="csv-parse") as pool:
        parsing: deque[tuple[Future, int]] = deque()
        for piece, done in pieces:
            parsing.append((pool.submit(_parse_csv, piece, header, columns, types), done))
            if len(parsing) > workers:
                future, done = parsing.popleft()
                yield future.result(), done
        while parsing:
            future, done = parsing.popleft()
            yield future.result(), done


def _parse_csv(
    piece: memoryview, header: list[str], columns: list[str], types: dict[str, Any], skip_rows: int = 0
) -> Any:
    """One piece of a CSV as one record batch of `columns`, parsed on the calling thread."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    # 1 MiB blocks: 16 MiB ones parse at two thirds of the speed (a block no longer stays in cache)
    read = pacsv.ReadOptions(column_names=header, skip_rows=skip_rows, block_size=1 << 20, use_threads=False)
    convert = pacsv.ConvertOptions(column_types=types, include_columns=columns)
    table = pacsv.read_csv(pa.py_buffer(piece), read_options=read, convert_options=convert)
    batches = table.combine_chunks().to_batches()  # one batch, or none for a piece of blank lines
    return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)


def read_ahead(items: Iterator[T]) -> Iterator[T]:
    """The items of `items`, each made on a worker thread while the caller works on the one before.

    For the reading loops: pyarrow's decoding and row-major conversion release the GIL, so on two cores
    the next block is read while this one is checked, scored or written. One item ahead at most: memory
    stays bounded. An error making an
    item is raised here, at that item; a caller that stops early waits for at most the one in flight.
    """
    done = object()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-ahead") as pool:
        pending = pool.submit(next, items, done)
        while (item := pending.result()) is not done:
            pending = pool.submit(next, items, done)
            yield item


def _numbers_only(batch: Any, columns: list[str], where: str, first_row: int) -> None:
    """Refuse a column that is not numbers (e.g. booleans), naming its first valid cell."""
    import pyarrow as pa

    for name in columns:
        kind = batch.schema.field(name).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            values = batch.column(name)
            i = next((k for k in range(len(values)) if values[k].is_valid), 0)
            problem = cell_problem(values[i].as_py()) if len(values) else None
            raise TableError(f"{where}, row {first_row + i}, column {name!r}: {problem or f'not numeric ({kind})'}")


def float32_rows(batch: Any, columns: list[str], where: str, first_row: int) -> np.ndarray:
    """`columns` of a record batch as a C-order float32 matrix, nulls as NaN, for prepare (which judges gaps).

    Refused here: a column that is not numbers (e.g. booleans), and in a wider column a value beyond float32
    (an infinity included), which float32 would round to infinity.

    pyarrow's row-major conversion (C++, one pass) runs at about twice a column-by-column copy into the matrix.
    """
    _numbers_only(batch, columns, where, first_row)
    X = np.asarray(batch.select(columns).to_tensor(null_to_nan=True, row_major=True))
    if X.dtype == np.float32:  # float32 holds nothing beyond float32
        return X
    bad = np.abs(X) > FLOAT32_MAX  # wider columns: a value beyond float32 is refused, not rounded to infinity
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise TableError(f"{where}, row {first_row + i}, column {columns[j]!r}: {cell_problem(X[i, j])}")
    return X.astype(np.float32)


def float32_columns(batch: Any, columns: list[str], where: str, first_row: int) -> list[np.ndarray]:
    """`columns` of a record batch as float32 arrays, one per column, for scoring: every cell a finite number.

    A TableError names the first cell, in row order, that is not a number, is missing, NaN, infinite or beyond
    float32. No row-major matrix: the scorer sums each row feature by feature (model.column_logits).
    """
    _numbers_only(batch, columns, where, first_row)
    arrays, first_bad = [], (len(batch), 0)  # (row, column) of the first refused cell
    for j, name in enumerate(columns):
        values = batch.column(name).to_numpy(zero_copy_only=False)  # a null becomes NaN
        if values.dtype != np.float32:
            values = values.astype(np.float64)  # what the server's frames hold: then rounded to float32 alike
        bad = ~np.isfinite(values) if values.dtype == np.float32 else refused(values)
        if bad.any():
            first_bad = min(first_bad, (int(np.argmax(bad)), j))
        arrays.append(values)
    i, j = first_bad
    if i < len(batch):
        raise TableError(f"{where}, row {first_row + i}, column {columns[j]!r}: {cell_problem(arrays[j][i])}")
    return [values.astype(np.float32, copy=False) for values in arrays]


def first_bad_csv_cell(path: Path, header: list[str], numbers: list[str], hints: dict[str, str]) -> str | None:
    """The first ragged row or non-number of a CSV (found again with Python's csv once pyarrow refused it)."""
    wanted = [header.index(n) for n in numbers]
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as fh:
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
                    if cell:  # an empty cell is a null: a missing value, refused (or dropped) by the caller
                        where = f"{path}, row {line_no}, column {header[j]!r}"
                        return f"{where}: {cell_problem(cell)}{hints.get(header[j], '')}"
    return None


def cell_problem(value: Any) -> str | None:
    """Why one cell cannot be a feature value, or None: a number (not a boolean), finite, within float32."""
    if isinstance(value, bool | np.bool_):
        return f"not a number: {value!r} (booleans are refused, send 0 or 1)"
    if value is None:
        return "missing, NaN or infinite value"
    if isinstance(value, str):  # text that reads as a number is one, as in a CSV cell (and MLflow's parser)
        try:
            value = float(value)
        except ValueError:
            return f"not a number: {_shown(value)}"
    if not isinstance(value, int | float | np.number):
        return f"not a number: {_shown(value)}"
    try:
        number = float(value)
    except OverflowError:
        return f"an integer of {len(str(value))} digits is beyond float32"
    if not np.isfinite(number):
        return "missing, NaN or infinite value"
    if abs(number) > FLOAT32_MAX:  # the model computes in float32
        return f"{number:g} is beyond float32"
    return None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def refused(X: np.ndarray) -> np.ndarray:
    """Where a float64 matrix holds what cell_problem refuses of a number: NaN, infinity, beyond float32."""
    return ~np.isfinite(X) | (np.abs(X) > FLOAT32_MAX)


def feature_matrix(frame: pd.DataFrame, features: tuple[str, ...], first_row: int = 1) -> np.ndarray:
    """The model's features as a float64 matrix: numbers accepted; booleans, strings, NaN and inf refused."""
    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise TableError(f"missing column(s) {missing}; the model takes {list(features)}")
    columns = frame if tuple(frame.columns) == features else frame[list(features)]
    # Numeric columns are checked in bulk; others cell by cell first, since numpy reads True as 1.0.
    problem = None if all(kind.kind in "iuf" for kind in columns.dtypes) else first_bad_cell(columns, first_row)
    if problem:
        raise TableError(problem)
    X = columns.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = refused(X)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise TableError(f"row {first_row + i}, column {features[j]!r}: {cell_problem(X[i, j])}")
    return X


def first_bad_cell(columns: pd.DataFrame, first_row: int) -> str | None:
    """`row R, column 'C': problem` for the first cell (row by row) that cell_problem refuses."""
    for i, row in enumerate(columns.itertuples(index=False, name=None)):
        for name, value in zip(columns.columns, row, strict=True):
            problem = cell_problem(value)
            if problem:
                return f"row {first_row + i}, column {name!r}: {problem}"
    return None
