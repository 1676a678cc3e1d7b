"""One validator for every table the pipeline reads: files for prepare and batch scoring, request bodies.

A bad cell gets the same words wherever it is found: `<file or request>, row R, column 'C': <problem>`.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pandas costs ~0.4 s to import: prepare never needs it
    import pandas as pd

FLOAT32_MAX = float(np.finfo(np.float32).max)  # the model computes in float32
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
DELIMITERS = (";", "\t", "|")  # what a one-column header holding one of these was probably separated by


class TableError(ValueError):
    """A table that cannot be used; the message names the file (or request), row and column."""


def file_format(path: Path) -> str:
    """The format ("csv" or "parquet") named by the file extension."""
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise TableError(f"{path}: unknown file type; use one of {', '.join(FORMATS)}") from None


def check_file(path: Path) -> str:
    """A readable CSV or Parquet file: its format, or an error naming what is wrong with the path."""
    fmt = file_format(path)
    if path.is_dir():
        raise TableError(f"{path}: is a directory, not a {fmt} file")
    if not path.is_file():
        raise TableError(f"{path}: file not found")
    return fmt


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
    bad = ~np.isfinite(X) | (np.abs(X) > FLOAT32_MAX)
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


