"""The prepare stage's computation: validate streamed rows, split, standardise, write the prepared dataset.

Rows stream from pipeline.sources in chunks into .npy files on disk, a part per file of the source, so a table
of any size is held in memory at most once (as the page cache of those files), never as a Python or pandas copy.
Each part is its own work (a Ray task with cluster.engine ray): it decides its rows' split from their positions
and sums its train rows' moments. With standardisation on, the moments are merged in part order and the parts
standardised in place: train and scikit-learn's baseline read the same arrays, and no stage makes a scaled copy.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import dataset, files
from pipeline.engines import Map, in_process
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


def check_labels(classes: list[int], source: Source) -> None:
    """At least two rows and both classes (`classes`: how many rows are 0 and 1)."""
    if sum(classes) < 2:
        raise TableError(f"{source.origin}: need at least two rows, got {sum(classes)}")
    if 0 in classes:
        raise TableError(
            f"{source.origin}, column {source.label!r}: only one class present ({classes.index(0) ^ 1}); need both"
        )


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


def check_split(classes: dict[str, list[int]], test_size: float) -> None:
    """Both classes on both sides of a split (a class too small for test_size can end all on one side)."""
    for cls in (0, 1):
        n_test, n_train = classes["test"][cls], classes["train"][cls]
        if n_test == 0 or n_train == 0:
            raise TableError(
                f"prepare.test_size={test_size} leaves class {cls} ({n_test + n_train} rows) with no "
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
        self._pending = self._writer.submit(files.write_all, self.fh, data)
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

    def state(self) -> dict:
        """What merge() takes: the count, the shift and the sums around it (JSON numbers, exact)."""
        shift = None if self.shift is None else self.shift.tolist()
        return {"n": self.n, "shift": shift, "sums": self.sums.tolist(), "squares": self.squares.tolist()}

    def merge(self, state: dict) -> None:
        """Add another's rows by their sums (a part's, in part order): its sums moved to this shift, in float64.

        Merging one part into an empty Moments gives that part's sums bit for bit; so does every engine that
        merges the same parts in the same order.
        """
        if not state["n"]:
            return
        shift = np.asarray(state["shift"], dtype=np.float32)
        if self.shift is None:
            self.shift = shift
        delta = shift.astype(np.float64) - self.shift.astype(np.float64)
        sums = np.asarray(state["sums"])
        self.squares += np.asarray(state["squares"]) + 2 * delta * sums + state["n"] * delta**2
        self.sums += sums + state["n"] * delta
        self.n += state["n"]

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
                dataset.read_into(fd, block, position, path)
                os.pwrite(fd, scale_rows(block, mean, scale, out=block), position)

        workers = max(1, min(os.cpu_count() or 1, n // CHUNK_ROWS))
        bounds = [n * i // workers for i in range(workers + 1)]
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(rows, bounds[:-1], bounds[1:]))  # list(): a thread's error is raised here


@dataclass(frozen=True)
class Part:
    """A file of the source (or the whole source), where its rows start in the table, and its number."""

    index: int
    source: Source
    first: int  # the position of its first row in the whole source, 0-based, dropped rows counted


def source_parts(source: Source) -> list[Part]:
    """One part per file of a Parquet dataset, placed by the row counts in the files' footers; else one part."""
    if not source.parts:
        return [Part(0, source, 0)]
    firsts = np.cumsum([0, *(part.rows for part in source.parts[:-1])]).tolist()
    return [Part(i, part, first) for i, (part, first) in enumerate(zip(source.parts, firsts, strict=True))]


def write_part(directory: Path, test_size: float, seed: int, missing: str, standardize: bool, part: Part) -> dict:
    """Every row the part keeps, in file order, to its X_train or X_test file as test_rows decides; its labels.

    Returns the part's manifest record: its rows, drops, split and class counts, the files' sha256 (of the rows
    as read: the scaling is in the manifest) and, when standardising, the moments of its train rows.
    """
    source, d, n_read, dropped = part.source, len(part.source.features), 0, 0
    labels: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    moments = Moments(d) if standardize else None
    test_file = directory / dataset.part_file("X_test", part.index) if test_size else Path(os.devnull)
    with NpyWriter(directory / dataset.part_file("X_train", part.index), d) as train, NpyWriter(test_file, d) as test:
        for chunk in source.chunks():
            n = chunk.X.shape[0]
            kept, which = check_chunk(chunk, source, missing)
            is_test = test_rows(part.first + n_read, n, test_size, seed)
            if which is not None:
                is_test = is_test[which]
            n_read, dropped = n_read + n, dropped + n - kept.X.shape[0]
            rows = np.compress(~is_test, kept.X, axis=0)  # new arrays, as the writers need; twice X[mask]'s speed
            train.write(rows)
            test.write(np.compress(is_test, kept.X, axis=0))
            labels["train"].append(kept.y[~is_test])
            labels["test"].append(kept.y[is_test])
            if moments is not None:
                moments.add(rows)
    if source.rows is not None and n_read != source.rows:
        raise TableError(f"{source.origin}: {n_read} rows read, its footer says {source.rows}")
    splits = ("train", "test") if test_size else ("train",)
    y = {name: np.concatenate(labels[name]) if labels[name] else np.empty(0, np.float32) for name in splits}
    digests = {"X_train": train.sha256.hexdigest()} | ({"X_test": test.sha256.hexdigest()} if test_size else {})
    for name in splits:
        np.save(directory / dataset.part_file(f"y_{name}", part.index), y[name])
        digests[f"y_{name}"] = hashlib.sha256(y[name]).hexdigest()
    return {
        "source": source.origin,
        "first_row": part.first,
        "rows": n_read,
        "dropped": dropped,
        "train": int(y["train"].size),
        "test": int(y["test"].size) if test_size else 0,
        "classes": {name: [int((y[name] == 0).sum()), int((y[name] == 1).sum())] for name in splits},
        "sha256": digests,
        "moments": None if moments is None else moments.state(),
    }


def scale_part(directory: Path, mean: list[float], scale: list[float], index: int) -> None:
    """Standardise a part's X files in place."""
    for name in ("X_train", "X_test"):
        path = directory / dataset.part_file(name, index)
        if path.exists():
            scale_file(path, mean, scale)


def prepare_dir(
    out: str | Path,
    source: Source,
    test_size: float,
    seed: int,
    standardize: bool,
    missing: str,
    each: Map = in_process,
) -> dict:
    """Stream the source into `out` (atomically), a part per file: validated, split, standardiser fitted on train.

    `missing` ("error" or "drop") says what a row with a missing feature or label does; the manifest counts the
    drops. `each` runs the parts' work: here one after another, or as Ray tasks (pipeline.engines); the parts,
    their moments merged in part order and the manifest are the same bits either way.

    Writes each part's X_train / y_train (and X_test / y_test unless test_size is 0) plus meta.json;
    returns the meta, whose sha256 identifies the prepared data.
    """
    meta: dict = {}
    parts = source_parts(source)

    def fill(tmp: Path) -> None:
        tmp = tmp.resolve()  # where the parts go, the same for every worker
        records = list(each(write_part, parts, tmp, test_size, seed, missing, standardize))
        splits = records[0]["classes"]  # train, and test unless test_size is 0
        classes = {name: [sum(r["classes"][name][c] for r in records) for c in (0, 1)] for name in splits}
        check_labels([sum(counts) for counts in zip(*classes.values(), strict=True)], source)
        if test_size:
            check_split(classes, test_size)
        mean = scale = None
        if standardize:
            moments = Moments(len(source.features))
            for record in records:
                moments.merge(record["moments"])
            mean, scale = moments.result()
            list(each(scale_part, range(len(parts)), tmp, mean, scale))
        n_train = sum(r["train"] for r in records)
        meta.update(
            features=list(source.features),
            label=source.label,
            source=source.origin,
            evaluated_on="test" if test_size else "train",
            mean=mean,
            scale=scale,
            n_train=n_train,
            n_test=sum(r["test"] for r in records) or n_train,
            dropped_rows=sum(r["dropped"] for r in records),
            parts=records,
        )
        meta["sha256"] = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    files.write_dir(out, fill)
    return meta
