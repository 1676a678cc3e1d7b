"""Data sources, validation, the stratified split, standardisation and prepared-data I/O."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import files

BUILTIN_SOURCES = ("breast_cancer",)


class DataError(ValueError):
    """Input data that cannot be used; the message names the file, row and column."""


@dataclass(frozen=True)
class Table:
    """Features (float32, rows x features), labels (float32 0/1) and the feature names."""

    X: np.ndarray
    y: np.ndarray
    features: tuple[str, ...]
    label: str
    origin: str


@dataclass(frozen=True)
class Prepared:
    """The prepared splits plus what every later consumer needs to apply to raw features."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    features: tuple[str, ...]
    label: str
    source: str
    evaluated_on: str  # "test", or "train" when test_size is 0 (the tutorial)
    mean: tuple[float, ...] | None
    scale: tuple[float, ...] | None
    sha256: str = ""


def read_csv(path: str | Path, label: str) -> Table:
    """Read a numeric CSV with a header; `label` is the label column, the rest are features."""
    path = Path(path)
    try:
        fh = path.open(newline="", encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found") from exc
    with fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header:
            raise DataError(f"{path}: empty file, expected a header row")
        header = [h.strip() for h in header]
        if label not in header:
            raise DataError(f"{path}: label column {label!r} not in header {header}")
        if len(set(header)) != len(header) or "" in header:
            raise DataError(f"{path}: header has empty or duplicate column names: {header}")
        rows = []
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(f"{path}, row {line_no}: expected {len(header)} columns, got {len(row)}")
            rows.append([_number(cell, path, line_no, header[j]) for j, cell in enumerate(row)])
    values = np.array(rows, dtype=np.float64).reshape(len(rows), len(header))
    j = header.index(label)
    features = tuple(h for h in header if h != label)
    X = np.delete(values, j, axis=1)
    table = Table(X, values[:, j], features, label, str(path))
    validate(table, row_offset=2)
    return Table(X.astype(np.float32), table.y.astype(np.float32), features, label, str(path))


def _number(cell: str, path: Path, line_no: int, column: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise DataError(f"{path}, row {line_no}, column {column!r}: not a number: {cell!r}") from None
    if not math.isfinite(value):
        raise DataError(f"{path}, row {line_no}, column {column!r}: NaN or infinite value {cell!r}")
    return value


def load_builtin(name: str, label: str) -> Table:
    """Load a dataset bundled with scikit-learn (no download)."""
    if name != "breast_cancer":
        raise DataError(f"unknown built-in source {name!r} (known: {', '.join(BUILTIN_SOURCES)})")
    from sklearn.datasets import load_breast_cancer  # imported here: costs ~1 s

    bunch = load_breast_cancer()
    table = Table(bunch.data, bunch.target.astype(np.float64), tuple(bunch.feature_names), label, name)
    validate(table, row_offset=1)
    return Table(table.X.astype(np.float32), table.y.astype(np.float32), table.features, label, name)


def load_source(source: str, label: str) -> Table:
    """A CSV path or the name of a built-in dataset."""
    return load_builtin(source, label) if source in BUILTIN_SOURCES else read_csv(source, label)


def validate(table: Table, row_offset: int) -> None:
    """Finite numeric features, a binary 0/1 label, both classes, at least two rows."""
    X, y, where = table.X, table.y, table.origin
    if X.shape[0] < 2:
        raise DataError(f"{where}: need at least two rows, got {X.shape[0]}")
    if X.shape[1] < 1:
        raise DataError(f"{where}: no feature columns besides the label {table.label!r}")
    bad = np.argwhere(~np.isfinite(X))
    if bad.size:
        i, j = bad[0]
        raise DataError(f"{where}, row {i + row_offset}, column {table.features[j]!r}: NaN or infinite value")
    not_binary = np.flatnonzero((y != 0) & (y != 1))
    if not_binary.size:
        i = not_binary[0]
        raise DataError(f"{where}, row {i + row_offset}, column {table.label!r}: label must be 0 or 1, got {y[i]:g}")
    if np.unique(y).size < 2:
        raise DataError(f"{where}, column {table.label!r}: only one class present ({y[0]:g}); need both 0 and 1")


def stratified_split(y: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class shuffle; each class contributes round(test_size * count) test rows."""
    if test_size == 0:
        everything = np.arange(y.shape[0])
        return everything, everything[:0]
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in (0.0, 1.0):
        idx = rng.permutation(np.flatnonzero(y == cls))
        n_test = int(round(test_size * idx.size))
        if n_test == 0 or n_test == idx.size:
            raise DataError(
                f"data.test_size={test_size} leaves class {cls:g} ({idx.size} rows) with no "
                f"{'test' if n_test == 0 else 'train'} rows"
            )
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def fit_standardizer(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation per column; constant columns get scale 1."""
    mean = X.mean(axis=0, dtype=np.float64)
    scale = X.std(axis=0, dtype=np.float64)
    scale[scale == 0] = 1.0
    return mean, scale


def prepare(table: Table, test_size: float, seed: int, standardize: bool) -> Prepared:
    """Split, and fit the standardiser on the train split only (applied later, by the model)."""
    train_idx, test_idx = stratified_split(table.y, test_size, seed)
    X_train, y_train = table.X[train_idx], table.y[train_idx]
    X_test, y_test = (table.X[test_idx], table.y[test_idx]) if test_idx.size else (X_train, y_train)
    mean = scale = None
    if standardize:
        m, s = fit_standardizer(X_train)
        mean, scale = tuple(m.tolist()), tuple(s.tolist())
    return Prepared(
        X_train,
        y_train,
        X_test,
        y_test,
        table.features,
        table.label,
        table.origin,
        "test" if test_idx.size else "train",
        mean,
        scale,
    )


_ARRAYS = ("X_train", "y_train", "X_test", "y_test")


def _meta(p: Prepared) -> dict:
    return {
        "features": list(p.features),
        "label": p.label,
        "source": p.source,
        "evaluated_on": p.evaluated_on,
        "mean": None if p.mean is None else list(p.mean),
        "scale": None if p.scale is None else list(p.scale),
        "n_train": int(p.y_train.shape[0]),
        "n_test": int(p.y_test.shape[0]),
    }


def _digest(arrays: dict[str, np.ndarray], meta: dict) -> str:
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name in _ARRAYS:
        h.update(name.encode())
        h.update(np.ascontiguousarray(arrays[name]).tobytes())
    return h.hexdigest()


def save_prepared(directory: str | Path, p: Prepared) -> str:
    """Write the splits as float32 .npy (memory-mappable) plus meta.json; returns the data hash."""
    arrays = {name: getattr(p, name) for name in _ARRAYS}
    if p.evaluated_on == "train":  # the test split is the train split: store it once
        arrays = {k: v for k, v in arrays.items() if k.endswith("_train")}
    meta = _meta(p)
    digest = _digest({**arrays, "X_test": p.X_test, "y_test": p.y_test}, meta)

    def fill(tmp: Path) -> None:
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(array, dtype=np.float32))
        (tmp / "meta.json").write_text(json.dumps({**meta, "sha256": digest}, indent=2, sort_keys=True) + "\n")

    files.write_dir(directory, fill)
    return digest


def read_meta(directory: str | Path) -> dict:
    """meta.json alone (features, split, scaling, sha256) without loading the arrays."""
    return files.read_json(Path(directory) / "meta.json")


def load_prepared(directory: str | Path) -> Prepared:
    """Read what save_prepared wrote."""
    directory = Path(directory)
    meta = read_meta(directory)
    arrays = {}
    for name in _ARRAYS:
        file = directory / f"{name}.npy"
        if name.endswith("_test") and meta["evaluated_on"] == "train":
            file = directory / f"{name[:-5]}_train.npy"
        arrays[name] = np.load(file)
    return Prepared(
        **arrays,
        features=tuple(meta["features"]),
        label=meta["label"],
        source=meta["source"],
        evaluated_on=meta["evaluated_on"],
        mean=None if meta["mean"] is None else tuple(meta["mean"]),
        scale=None if meta["scale"] is None else tuple(meta["scale"]),
        sha256=meta["sha256"],
    )
