"""The prepared dataset on disk: memory-mappable float32 arrays and their meta (prepare writes, every stage reads).

X_train.npy, y_train.npy, X_test.npy, y_test.npy (no test files when test_size is 0: evaluation is on the
train split) and meta.json: features, label, source, split, the standardisation the rows were written with, sha256.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from pipeline import files
from pipeline.sources import CHUNK_ROWS


@dataclass(frozen=True)
class Prepared:
    """The prepared splits (memory-mapped), their features, and the standardisation they were written with."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    features: tuple[str, ...]
    label: str
    source: str
    evaluated_on: str  # "test", or "train" when test_size is 0 (the tutorial)
    mean: tuple[float, ...] | None  # X = (raw - mean) / scale; None: X holds the raw features
    scale: tuple[float, ...] | None
    sha256: str = ""


def npy_shape(fh: BinaryIO) -> tuple[int, int]:
    """The (rows, columns) of a 2-D .npy, read from its header; `fh` is left at the first row."""
    fmt = np.lib.format
    read_header = fmt.read_array_header_1_0 if fmt.read_magic(fh) == (1, 0) else fmt.read_array_header_2_0
    (n, d), _, _ = read_header(fh)
    return n, d


def raw_rows(prepared: Prepared, X: np.ndarray) -> np.ndarray:
    """Prepared rows back as raw features, in float64 (within float32 rounding of the source's values)."""
    X = np.asarray(X, dtype=np.float64)
    return X if prepared.mean is None else X * np.asarray(prepared.scale) + np.asarray(prepared.mean)


def read_rows(path: Path) -> Iterator[np.ndarray]:
    """The rows of a float32 .npy, CHUNK_ROWS at a time, by plain reads (no memory map to grow RSS)."""
    with path.open("rb") as fh:
        n, d = npy_shape(fh)
        for start in range(0, n, CHUNK_ROWS):
            rows = min(CHUNK_ROWS, n - start)
            yield np.fromfile(fh, dtype=np.float32, count=rows * d).reshape(rows, d)


_ARRAYS = ("X_train", "y_train", "X_test", "y_test")


def read_meta(directory: str | Path) -> dict:
    """meta.json alone (features, split, scaling, sha256) without loading the arrays."""
    return files.read_json(Path(directory) / "meta.json")


def array_path(directory: Path, name: str, evaluated_on: str) -> Path:
    """The file holding one of X_train, y_train, X_test, y_test (the train split's when test_size was 0)."""
    if name.endswith("_test") and evaluated_on == "train":
        name = f"{name[:-5]}_train"
    return directory / f"{name}.npy"


def load_prepared(directory: str | Path) -> Prepared:
    """Map what prepare_dir wrote: copy-on-write memory maps, so nothing is read until used.

    mmap_mode="c" gives writable views (torch.from_numpy takes them without a warning or a copy);
    writes, which nothing here does, would stay private to this process.
    """
    directory = Path(directory)
    meta = read_meta(directory)
    arrays = {name: np.load(array_path(directory, name, meta["evaluated_on"]), mmap_mode="c") for name in _ARRAYS}
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
