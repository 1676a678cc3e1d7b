"""The prepared dataset on disk: float32 arrays in parts and the manifest listing them (prepare writes, all read).

A part holds the rows of one file of the source (a single file, `synthetic` or a bundled table: one part):
X_train-00000.npy, y_train-00000.npy, X_test-00000.npy, y_test-00000.npy (no test files when test_size is 0:
evaluation is on the train split). meta.json is the manifest: features, label, source, split, the
standardisation the rows were written with, each part's rows, hashes and moments, and the sha256 of it all.
A reader of some rows reads only the parts that hold them; with one part, the arrays are memory maps.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

import numpy as np

from pipeline import files


def npy_shape(fh: BinaryIO) -> tuple[int, ...]:
    """The shape of a .npy, read from its header; `fh` is left at the first row."""
    fmt = np.lib.format
    read_header = fmt.read_array_header_1_0 if fmt.read_magic(fh) == (1, 0) else fmt.read_array_header_2_0
    shape, _, _ = read_header(fh)
    return shape


def read_into(fd: int, block: np.ndarray, offset: int, path: Path) -> None:
    """Fill a contiguous array from a file at `offset` (a read returns at most 2 GiB: as many as it takes)."""
    view, done = memoryview(block).cast("B"), 0
    while done < view.nbytes:
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise OSError(f"{path}: shorter than its header says")
        done += n


def _read_rows(path: Path, row: int, block: np.ndarray) -> None:
    """Fill `block` with the rows of a part's .npy from `row` on."""
    with path.open("rb", buffering=0) as fh:
        npy_shape(fh)
        read_into(fh.fileno(), block, fh.tell() + row * block[:1].nbytes, path)


def part_file(name: str, index: int) -> str:
    """The file of array `name` (X_train, y_train, X_test, y_test) in part `index`."""
    return f"{name}-{index:05d}.npy"


def read_meta(directory: str | Path) -> dict:
    """meta.json alone (features, split, scaling, parts, sha256) without loading the arrays."""
    return files.read_json(Path(directory) / "meta.json")


@dataclass(frozen=True)
class Prepared:
    """The prepared splits, read when first used, and their features and standardisation (from the manifest).

    `train_rows` narrows X_train and y_train to a range of rows (a DDP rank's share): only the parts that hold
    them are read.
    """

    directory: Path
    meta: dict
    train_rows: slice | None = None  # None: every row
    part: int | None = None  # one part's rows alone (a Ray task's); None: every part's

    @property
    def features(self) -> tuple[str, ...]:
        """The feature columns, in the arrays' order."""
        return tuple(self.meta["features"])

    @property
    def label(self) -> str:
        """The source's label column."""
        return self.meta["label"]

    @property
    def evaluated_on(self) -> str:
        """Which split evaluation is on: test, or train when test_size is 0 (the tutorial)."""
        return self.meta["evaluated_on"]

    @property
    def mean(self) -> tuple[float, ...] | None:
        """X = (raw - mean) / scale; None: X holds the raw features."""
        return None if self.meta["mean"] is None else tuple(self.meta["mean"])

    @property
    def scale(self) -> tuple[float, ...] | None:
        """The standard deviations X was divided by; None: X holds the raw features."""
        return None if self.meta["scale"] is None else tuple(self.meta["scale"])

    @property
    def sha256(self) -> str:
        """The manifest's digest: it identifies the prepared data."""
        return self.meta["sha256"]

    @cached_property
    def X_train(self) -> np.ndarray:
        """The train split's features (train_rows of them)."""
        return self._rows("X_train", self.train_rows or slice(None))

    @cached_property
    def y_train(self) -> np.ndarray:
        """The train split's labels (train_rows of them)."""
        return self._rows("y_train", self.train_rows or slice(None))

    @cached_property
    def X_test(self) -> np.ndarray:
        """The evaluation split's features (the train split's when test_size is 0)."""
        return self._rows("X_test" if self.evaluated_on == "test" else "X_train", slice(None))

    @cached_property
    def y_test(self) -> np.ndarray:
        """The evaluation split's labels."""
        return self._rows("y_test" if self.evaluated_on == "test" else "y_train", slice(None))

    def only(self, part: int) -> Prepared:
        """The rows of one part alone (X_test and y_test its evaluation rows, X_train and y_train its train rows)."""
        return replace(self, part=part)

    def train_shape(self, name: str) -> tuple[int, ...]:
        """The shape of the train split's array `name` (X_train or y_train), from the manifest and a header."""
        return self._spans(name, self.train_rows or slice(None))[0]

    def train_blocks(self, name: str, buffer: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """The train split's rows of `name` read into `buffer` a block at a time: (first row, the block's rows).

        The host holds one block, never the whole array (a device copy's source). A block is valid until the next.
        """
        for path, row, lo, hi in self._spans(name, self.train_rows or slice(None))[1]:
            for at in range(lo, hi, len(buffer)):
                block = buffer[: min(len(buffer), hi - at)]
                _read_rows(path, row + at - lo, block)
                yield at, block

    def _rows(self, name: str, rows: slice) -> np.ndarray:
        """Rows of one array over the parts in order.

        One part: a copy-on-write memory map (nothing read until used; torch.from_numpy takes its writable view
        without a warning or a copy). Several: the rows read from the parts that hold them into one array
        (plain reads: no maps left to count twice).
        """
        if self.part is not None or len(self.meta["parts"]) == 1:
            return np.load(self.directory / part_file(name, self.part or 0), mmap_mode="c")[rows]
        shape, spans = self._spans(name, rows)
        out = np.empty(shape, dtype=np.float32)
        for path, row, lo, hi in spans:
            _read_rows(path, row, out[lo:hi])
        return out

    def _spans(self, name: str, rows: slice) -> tuple[tuple[int, ...], list[tuple[Path, int, int, int]]]:
        """The shape of `rows` of array `name`, and the parts that hold them: (file, its first row, rows lo:hi)."""
        split = name.split("_")[1]
        indices = range(len(self.meta["parts"])) if self.part is None else [self.part]
        counts = [self.meta["parts"][i][split] for i in indices]
        start, stop, _ = rows.indices(sum(counts))
        paths = [self.directory / part_file(name, i) for i in indices]
        with paths[0].open("rb") as fh:
            tail = npy_shape(fh)[1:]
        spans, first = [], 0
        for path, count in zip(paths, counts, strict=True):
            lo, hi = max(start, first), min(stop, first + count)
            if lo < hi:
                spans.append((path, lo - first, lo - start, hi - start))
            first += count
        return (max(0, stop - start), *tail), spans


def load_prepared(directory: str | Path) -> Prepared:
    """The prepared dataset in `directory`: the manifest read now, the arrays when first used."""
    return Prepared(Path(directory), read_meta(directory))


def raw_rows(prepared: Prepared, X: np.ndarray) -> np.ndarray:
    """Prepared rows back as raw features, in float64 (within float32 rounding of the source's values)."""
    X = np.asarray(X, dtype=np.float64)
    return X if prepared.mean is None else X * np.asarray(prepared.scale) + np.asarray(prepared.mean)
