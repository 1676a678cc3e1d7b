"""The prepare stage's computation: validate streamed rows, split, standardise, write the prepared dataset.

Rows stream from pipeline.sources in chunks into a .npy file on disk, so a table of any size is
held in memory at most once (as the page cache of that file), never as a Python or pandas copy.
With standardisation on, the arrays are standardised in place once the train split's statistics are known:
train and scikit-learn's baseline read the same arrays, and no stage makes a scaled copy of X.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from pipeline import dataset, files
from pipeline.sources import CHUNK_ROWS, Chunk, Source
from pipeline.tables import TableError


def check_chunk(chunk: Chunk, source: Source, missing: str) -> tuple[Chunk, np.ndarray | None]:
    """0/1 labels and finite features, a row with a missing value refused or dropped (prepare.missing).

    Returns the rows kept and which they are (None: all); an error names the row as the file counts it, and the
    column.
    """
    not_binary = np.flatnonzero((chunk.y != 0) & (chunk.y != 1) & ~np.isnan(chunk.y))
    if not_binary.size:
        i = not_binary[0]
        raise TableError(
            f"{chunk.where or source.origin}, row {chunk.first_row + i}, column {source.label!r}: "
            f"label must be 0 or 1, got {chunk.y[i]:g} (or set prepare.positive to the value that means 1)"
        )
    bad, no_label = ~np.isfinite(chunk.X), np.isnan(chunk.y)
    if not bad.any() and not no_label.any():
        return chunk, None
    rows = bad.any(axis=1) | no_label
    refused = rows if missing == "error" else np.isinf(chunk.X).any(axis=1)  # infinity is a value, not a gap
    if refused.any():
        i = int(np.argmax(refused))
        where = f"{chunk.where or source.origin}, row {chunk.first_row + i}"
        hint = " (prepare.missing: drop drops such rows)" if missing == "error" else ""
        if not bad[i].any():
            raise TableError(f"{where}, column {source.label!r}: missing label{hint}")
        j = int(np.argmax(bad[i]))
        hint = "" if np.isinf(chunk.X[i, j]) else hint
        raise TableError(f"{where}, column {source.features[j]!r}: missing, NaN or infinite value{hint}")
    return Chunk(chunk.X[~rows], chunk.y[~rows], chunk.first_row, chunk.where), ~rows


def check_labels(y: np.ndarray, source: Source) -> None:
    """At least two rows and both classes."""
    if y.shape[0] < 2:
        raise TableError(f"{source.origin}: need at least two rows, got {y.shape[0]}")
    if y.min() == y.max():  # labels are 0/1 by now: no sort needed to count the classes
        raise TableError(f"{source.origin}, column {source.label!r}: only one class present ({y[0]:g}); need both")


def test_rows(first: int, n: int, test_size: float, seed: int) -> np.ndarray:
    """Which of the source's rows first .. first + n - 1 (0-based, dropped rows counted) are test rows.

    Each row's own uniform draw from the seed and its position (splitmix64 of seed and position): a reader of any
    part of the table decides its rows alone, with no pass over the labels first and nothing shared (Ray's
    workers, one per file). Each class gives test_size of its rows in expectation.
    """
    if test_size == 0:
        return np.zeros(n, dtype=bool)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps, as splitmix64 means it to
        z = np.arange(first, first + n, dtype=np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53 < test_size


def check_split(y_train: np.ndarray, y_test: np.ndarray, test_size: float) -> None:
    """Both classes on both sides of a split (a class too small for test_size can end all on one side)."""
    for cls in (0.0, 1.0):
        n_test, n_train = int((y_test == cls).sum()), int((y_train == cls).sum())
        if n_test == 0 or n_train == 0:
            raise TableError(
                f"prepare.test_size={test_size} leaves class {cls:g} ({n_test + n_train} rows) with no "
                f"{'test' if n_test == 0 else 'train'} rows"
            )


# ---------------------------------------------------------------- writing and reading prepared data
class NpyWriter:
    """Append float32 rows to a .npy file whose row count is known only at the end, hashing them as they go.

    A fixed 128-byte header is reserved and rewritten on close: the file is a valid .npy that
    np.load can memory-map, built without ever holding the array.

    Each write goes to the file on a thread of its own while the caller hashes the rows and moves on (one
    write in flight: the rows given must not change until the next write or close). Writing into fresh page
    cache is mostly page faults on these VMs, hashing is CPU: overlapped (with np.compress for the split's
    row selection), they take about the time of the slower one (benchmarks/pipeline_scale.py times prepare).
    """

    HEADER_BYTES = 128

    def __init__(self, path: Path, n_columns: int) -> None:
        self.path, self.n_columns, self.rows = path, n_columns, 0
        self.sha256 = hashlib.sha256()  # of the rows' bytes: the prepared data's digest without reading it again
        self.fh = path.open("wb")
        self.fh.write(b"\0" * self.HEADER_BYTES)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="npy-write")
        self._pending: Future | None = None

    def write(self, X: np.ndarray) -> None:
        """Append rows (C order, float32)."""
        if not X.size:
            return
        data = memoryview(np.ascontiguousarray(X, dtype=np.float32)).cast("B")  # no bytes copy
        self._wait()
        self._pending = self._writer.submit(self.fh.write, data)
        self.sha256.update(data)  # releases the GIL, as the write does
        self.rows += X.shape[0]

    def _wait(self) -> None:
        """Let the write in flight finish; raise its error here."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def __enter__(self) -> NpyWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Write the real header (magic, version 1.0, the dict padded with spaces to 128 bytes); cut the rest."""
        try:
            self._wait()
            text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({self.rows}, {self.n_columns}), }}"
            body = text.encode("latin1").ljust(self.HEADER_BYTES - 10 - 1) + b"\n"
            self.fh.seek(0)
            self.fh.write(b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body)
        finally:
            self._writer.shutdown()
            self.fh.close()


class Moments:
    """Per-column mean and standard deviation in one pass, block by block.

    Sums of x - K and (x - K)^2 around a shift K (the first block's mean): K keeps the squares free of
    cancellation whatever the columns' offsets. Each run of GROUP_ROWS rows is summed in float32 and the
    runs' sums are accumulated in float64: within float32 rounding of float64 sums throughout, in numpy's
    fixed order (the same bits on any CPU), at about twice the speed of casting every block to float64 to sum it.
    """

    GROUP_ROWS = 32  # float32 runs this long stay within a few float32 ulps; longer ones were no faster

    def __init__(self, n_columns: int) -> None:
        self.n, self.shift = 0, None
        self.sums, self.squares = np.zeros(n_columns), np.zeros(n_columns)
        self.buffer = np.empty(0, dtype=np.float32)

    def add(self, block: np.ndarray) -> None:
        """Merge a block of float32 rows."""
        if not block.shape[0]:
            return
        if self.shift is None:
            self.shift = block.mean(axis=0, dtype=np.float64).astype(np.float32)
        if self.buffer.size < block.size:  # reused: a fresh array per block costs its page faults
            self.buffer = np.empty(block.size, dtype=np.float32)
        centred = self.buffer[: block.size].reshape(block.shape)
        np.subtract(block, self.shift, out=centred)
        self.sums += self._sum(centred)
        np.square(centred, out=centred)
        self.squares += self._sum(centred)
        self.n += block.shape[0]

    def _sum(self, rows: np.ndarray) -> np.ndarray:
        """Column sums in float64 of float32 sums over runs of GROUP_ROWS rows (the last run shorter)."""
        whole = rows.shape[0] - rows.shape[0] % self.GROUP_ROWS
        runs = rows[:whole].reshape(-1, self.GROUP_ROWS, rows.shape[1]).sum(axis=1)
        return runs.sum(axis=0, dtype=np.float64) + rows[whole:].sum(axis=0, dtype=np.float64)

    def result(self) -> tuple[list[float], list[float]]:
        """Mean and population standard deviation, as the float32 values X is scaled with; constant columns: 1."""
        offset = self.sums / self.n
        scale = np.sqrt(np.maximum(self.squares / self.n - offset**2, 0.0)).astype(np.float32)
        scale[scale == 0] = 1.0
        return (self.shift + offset).astype(np.float32).tolist(), scale.tolist()


def scale_rows(X: np.ndarray, mean: list[float], scale: list[float], out: np.ndarray | None = None) -> np.ndarray:
    """(X - mean) / scale in float32, into `out` if given."""
    out = np.subtract(X, np.asarray(mean, dtype=np.float32), out=out, dtype=np.float32)
    return np.divide(out, np.asarray(scale, dtype=np.float32), out=out)


def scale_file(path: Path, mean: list[float], scale: list[float]) -> None:
    """Standardise a float32 .npy in place by plain reads and writes (no memory map), a range of rows per core.

    Over the page cache prepare has just written, where a scaled copy of the same rows (what evaluate once made)
    is fresh memory, faulted in page by page on these VMs, at several times the cost.
    numpy and the reads and writes release the GIL; each thread reuses one block buffer.
    """
    with path.open("r+b", buffering=0) as fh:
        n, d = dataset.npy_shape(fh)
        offset, fd = fh.tell(), fh.fileno()

        def rows(lo: int, hi: int) -> None:
            buffer = np.empty((min(CHUNK_ROWS, hi - lo), d), dtype=np.float32)
            for start in range(lo, hi, CHUNK_ROWS):
                block, position = buffer[: min(CHUNK_ROWS, hi - start)], offset + 4 * d * start
                if os.preadv(fd, [block], position) != block.nbytes:
                    raise OSError(f"{path}: shorter than its header says")
                os.pwrite(fd, scale_rows(block, mean, scale, out=block), position)

        workers = max(1, min(os.cpu_count() or 1, n // CHUNK_ROWS))
        bounds = [n * i // workers for i in range(workers + 1)]
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(rows, bounds[:-1], bounds[1:]))  # list(): a thread's error is raised here


def _digest(meta: dict, arrays: dict[str, bytes]) -> str:
    """sha256 of the meta and of each array's sha256 (of its rows as read: shapes and scaling are in the meta)."""
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(arrays):
        h.update(name.encode() + arrays[name])
    return h.hexdigest()


def write_split(
    directory: Path, source: Source, test_size: float, seed: int, missing: str, moments: Moments | None
) -> tuple[np.ndarray, np.ndarray, int, dict[str, bytes]]:
    """Every row the source keeps, in file order, to X_train.npy or X_test.npy as test_rows decides.

    Train rows go to the moments too. Returns the train and test labels, the rows dropped and the files' sha256.
    """
    d, position, dropped = len(source.features), 0, 0
    labels: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    test_file = directory / "X_test.npy" if test_size else Path(os.devnull)  # no split: no test row to write
    with NpyWriter(directory / "X_train.npy", d) as train, NpyWriter(test_file, d) as test:
        for chunk in source.chunks():
            n = chunk.X.shape[0]
            kept, which = check_chunk(chunk, source, missing)
            is_test = test_rows(position, n, test_size, seed)
            if which is not None:
                is_test = is_test[which]
            position, dropped = position + n, dropped + n - kept.X.shape[0]
            rows = np.compress(~is_test, kept.X, axis=0)  # new arrays, as the writers need; twice X[mask]'s speed
            train.write(rows)
            test.write(np.compress(is_test, kept.X, axis=0))
            labels["train"].append(kept.y[~is_test])
            labels["test"].append(kept.y[is_test])
            if moments is not None:
                moments.add(rows)
    y = {name: np.concatenate(ys) if ys else np.empty(0, np.float32) for name, ys in labels.items()}
    return y["train"], y["test"], dropped, {"X_train": train.sha256.digest(), "X_test": test.sha256.digest()}


def prepare_dir(out: str | Path, source: Source, test_size: float, seed: int, standardize: bool, missing: str) -> dict:
    """Stream the source into `out` (atomically): validated, split, standardiser fitted on train only.

    `missing` ("error" or "drop") says what a row with a missing feature or label does; meta counts the drops.

    Writes X_train.npy / y_train.npy (and X_test / y_test unless test_size is 0) plus meta.json;
    returns the meta, whose sha256 identifies the prepared data.
    """
    meta: dict = {}

    def fill(tmp: Path) -> None:
        moments = Moments(len(source.features)) if standardize else None
        y_train, y_test, dropped, digests = write_split(tmp, source, test_size, seed, missing, moments)
        check_labels(np.concatenate([y_train, y_test]), source)
        if test_size:
            check_split(y_train, y_test, test_size)
            np.save(tmp / "y_test.npy", y_test)
            digests["y_test"] = hashlib.sha256(y_test).digest()
        else:  # the tutorial: evaluate on the training rows, stored once
            del digests["X_test"]
        np.save(tmp / "y_train.npy", y_train)
        digests["y_train"] = hashlib.sha256(y_train).digest()
        mean, scale = moments.result() if moments is not None else (None, None)
        for name in ("X_train", "X_test") if standardize else ():
            if (tmp / f"{name}.npy").exists():
                scale_file(tmp / f"{name}.npy", mean, scale)
        meta.update(
            features=list(source.features),
            label=source.label,
            source=source.origin,
            evaluated_on="test" if test_size else "train",
            mean=mean,
            scale=scale,
            n_train=int(y_train.size),
            n_test=int(y_test.size or y_train.size),
            dropped_rows=dropped,
        )
        meta["sha256"] = _digest(meta, digests)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    files.write_dir(out, fill)
    return meta
