from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import dataset, preparation, sources, tables
from pipeline.sources import open_source

from .conftest import REPO, prepared


def csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "t.csv"
    path.write_text(text)
    return path


def source(name, **kw):
    args = dict(label="y", features=None, n_samples=0, n_features=0, seed=1, positive=None) | kw
    return open_source(name, *(args[k] for k in ("label", "features", "n_samples", "n_features", "seed", "positive")))


def test_tutorial_csv(tmp_path):
    table = prepared(source(str(REPO / "data/raw/tutorial.csv")), tmp_path / "p")
    assert table.features == ("x1", "x2")
    assert table.X_train.dtype == np.float32
    assert table.X_train.tolist() == [[1, 2], [2, 3], [3, 1], [4, 3], [5, 3], [6, 2]]
    assert table.y_train.tolist() == [0, 0, 0, 1, 1, 1]


def test_label_column_may_be_anywhere(tmp_path):
    table = prepared(source(str(csv(tmp_path, "target,a,b\n0,1,2\n1,3,4\n")), label="target"), tmp_path / "p")
    assert table.features == ("a", "b") and table.X_train.tolist() == [[1, 2], [3, 4]]


@pytest.mark.parametrize(
    ("text", "label", "message"),
    [
        ("x1,x2,y\n1,2,0\n2,abc,1\n", "y", r"t.csv, row 3, column 'x2': not a number: 'abc'"),
        ("x1,x2,y\n1,2,0\n2,nan,1\n", "y", r"t.csv, row 3, column 'x2': missing, NaN or infinite"),
        ("x1,x2,y\n1,inf,0\n2,3,1\n", "y", r"t.csv, row 2, column 'x2': missing, NaN or infinite"),
        ("x1,x2,y\n1,2,0\n2,3,2\n", "y", r"t.csv, row 3, column 'y': label must be 0 or 1, got 2"),
        ("x1,x2,y\n1,2,1\n2,3,1\n", "y", r"t.csv, column 'y': only one class"),
        ("x1,x2,y\n1,2,1\n", "y", r"t.csv: need at least two rows"),
        ("x1,x2,y\n1,2,1\n2,3\n", "y", r"t.csv, row 3: expected 3 columns, got 2"),
        ("x1,x2\n1,2\n", "y", r"t.csv: label column 'y' not in header"),
        ("", "y", r"t.csv: empty file"),
        ("y\n0\n1\n", "y", r"t.csv: no feature columns"),
        ("x1,x2,y\n1,2,0\n2,3,yes\n", "y", r"row 3, column 'y': not a number: 'yes'; labels must be 0 or 1"),
        ("x1,x2,y\n1,2,0\n2,3,\n", "y", r"t.csv, row 3, column 'y': missing label \(prepare.missing: drop"),
        ("x1,x2,y\n1,2,0\n2,,1\n", "y", r"t.csv, row 3, column 'x2': missing, NaN or infinite value \(prepare.mis"),
        ("x1,x2,y\n1,2,0\n2,1e39,1\n", "y", r"t.csv, row 3, column 'x2': 1e\+39 is beyond float32"),
        ("x1,x2,y\n1,True,0\n2,3,1\n", "y", r"t.csv, row 2, column 'x2': not a number: 'True'"),
        ("x1,x2,y\n1,2,0\n2,3,1,4\n", "y", r"t.csv, row 3: expected 3 columns, got 4"),
        ("x1;x2;y\n1;2;0\n", "y", r"t.csv: one column 'x1;x2;y': the file looks ';'-separated"),
        ("x1\tx2\ty\n1\t2\t0\n", "y", r"t.csv: one column 'x1\\tx2\\ty': the file looks '\\t'-separated"),
        ("x1,x1,y\n1,2,0\n", "y", r"t.csv: header has empty or duplicate column names"),
        ("\ufeffx1,x2,y\n1,2,0\n2,3,x\n", "y", r"t.csv, row 3, column 'y': not a number: 'x'; labels must"),  # BOM
    ],
)
def test_bad_csv_names_file_row_and_column(tmp_path, text, label, message):
    with pytest.raises(tables.TableError, match=message):
        prepared(source(str(csv(tmp_path, text)), label=label), tmp_path / "p")
    assert not (tmp_path / "p").exists() and [p.name for p in tmp_path.iterdir()] == ["t.csv"]  # no leftovers


def test_missing_file(tmp_path):
    with pytest.raises(tables.TableError, match="absent.csv: file not found"):
        source(str(tmp_path / "absent.csv"))
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(tables.TableError, match="folder.csv: is a directory, not a csv file"):
        source(str(tmp_path / "folder.csv"))
    (tmp_path / "latin1.csv").write_bytes(b"x1,x2,y\n1,2,0\n" + "caf\xe9,3,1\n".encode("latin-1"))
    with pytest.raises(tables.TableError, match=r"latin1.csv: not UTF-8 text \(byte 0xe9 at offset 17\)"):
        prepared(source(str(tmp_path / "latin1.csv")), tmp_path / "p")
    (tmp_path / "utf16.csv").write_bytes("x1,x2,y\n".encode("utf-16"))
    with pytest.raises(
        tables.TableError, match=r"utf16.csv: not UTF-8 text \(byte 0xff at offset 0\); save it as UTF-8"
    ):
        source(str(tmp_path / "utf16.csv"))
    (tmp_path / "fake.parquet").write_text("x1,x2,y\n")
    with pytest.raises(tables.TableError, match="fake.parquet: not a Parquet file"):
        source(str(tmp_path / "fake.parquet"))
    with pytest.raises(tables.TableError, match="t.txt: prepare.source must be a .csv or .parquet file"):
        source(str(tmp_path / "t.txt"))


def test_positive_names_the_label_that_means_one(tmp_path):
    text = "x1,x2,species\n1,2,setosa\n2,3, virginica\n3,4,setosa\n"
    table = prepared(source(str(csv(tmp_path, text)), label="species", positive="virginica"), tmp_path / "p")
    assert table.y_train.tolist() == [0, 1, 0]
    frame = pd.DataFrame({"x1": [1.0, 2.0], "ok": [True, False], "answer": ["no", "yes"]})
    frame.to_parquet(tmp_path / "t.parquet")
    answers = source(str(tmp_path / "t.parquet"), label="answer", features=["x1"], positive="yes")
    from_parquet = prepared(answers, tmp_path / "q")
    assert from_parquet.y_train.tolist() == [0, 1]
    booleans = prepared(source(str(tmp_path / "t.parquet"), label="ok", features=["x1"]), tmp_path / "r")
    assert booleans.y_train.tolist() == [1, 0]  # a boolean label: True is 1
    # a null text label is missing, not the negative class
    pd.DataFrame({"x1": [1.0, 2.0, 3.0], "answer": ["no", None, "yes"]}).to_parquet(tmp_path / "n.parquet")
    with pytest.raises(tables.TableError, match=r"n.parquet, row 2, column 'answer': missing label"):
        prepared(source(str(tmp_path / "n.parquet"), label="answer", positive="yes"), tmp_path / "s")
    with pytest.raises(tables.TableError, match="prepare.positive: synthetic's labels are 0/1 already"):
        source("synthetic", n_samples=10, n_features=2, positive="1")


def test_missing_drop_drops_and_counts_rows(tmp_path):
    text = "x1,x2,y\n1,2,0\n,3,1\n3,4,\n4,nan,1\n5,6,1\n6,7,0\n"
    meta = preparation.prepare_dir(tmp_path / "p", source(str(csv(tmp_path, text))), 0.0, 1, False, "drop")
    table = dataset.load_prepared(tmp_path / "p")
    assert meta["dropped_rows"] == 3 and table.X_train.tolist() == [[1, 2], [5, 6], [6, 7]]
    assert table.y_train.tolist() == [0, 1, 0]
    infinite = csv(tmp_path, "x1,x2,y\n1,2,0\n2,inf,1\n3,,1\n")  # an infinity is a value, not a gap
    with pytest.raises(tables.TableError, match=r"row 3, column 'x2': missing, NaN or infinite value$"):
        preparation.prepare_dir(tmp_path / "q", source(str(infinite)), 0.0, 1, False, "drop")


def test_breast_cancer_is_bundled(tmp_path):
    table = prepared(source("breast_cancer"), tmp_path / "p")
    assert table.X_train.shape == (569, 30) and set(np.unique(table.y_train)) == {0.0, 1.0}


def test_split_is_each_rows_own_seeded_draw():
    split = preparation.test_rows(0, 100_000, 0.25, seed=3)
    assert np.array_equal(split, preparation.test_rows(0, 100_000, 0.25, seed=3))
    assert not np.array_equal(split, preparation.test_rows(0, 100_000, 0.25, seed=4))
    assert split.mean() == pytest.approx(0.25, abs=0.01)
    # any reader of a part of the table decides its rows alone: rows 500..599 as the whole table's
    assert np.array_equal(preparation.test_rows(500, 100, 0.25, seed=3), split[500:600])
    assert not preparation.test_rows(0, 1000, 0.0, seed=3).any()


def test_split_that_empties_a_class_is_an_error(tmp_path):
    pd.DataFrame({"a": np.arange(6.0), "y": [0, 0, 0, 1, 1, 1]}).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(tables.TableError, match=r"prepare.test_size=0.1 leaves class \d \(3 rows\) with no test rows"):
        preparation.prepare_dir(tmp_path / "prep", source(str(tmp_path / "t.parquet")), 0.1, 1, False, "error")
    assert not (tmp_path / "prep").exists()


def test_test_size_zero_evaluates_on_train(tmp_path):
    meta = preparation.prepare_dir(
        tmp_path / "prep", source(str(REPO / "data/raw/tutorial.csv")), 0.0, 1, False, "error"
    )
    p = dataset.load_prepared(tmp_path / "prep")
    assert meta["evaluated_on"] == p.evaluated_on == "train" and p.mean is None
    assert np.array_equal(p.X_test, p.X_train) and p.X_train.tolist() == [
        [1, 2],
        [2, 3],
        [3, 1],
        [4, 3],
        [5, 3],
        [6, 2],
    ]
    written = sorted(f.name for f in (tmp_path / "prep").iterdir())
    assert written == ["X_train-00000.npy", "meta.json", "y_train-00000.npy"]


@pytest.mark.parametrize("test_size", [0.2, 0.0])
def test_arrays_are_standardised_with_the_train_splits_statistics(tmp_path, test_size):
    preparation.prepare_dir(tmp_path / "prep", source("breast_cancer"), test_size, 1, True, "error")
    preparation.prepare_dir(tmp_path / "raw", source("breast_cancer"), test_size, 1, False, "error")
    p, raw = dataset.load_prepared(tmp_path / "prep"), dataset.load_prepared(tmp_path / "raw")
    # Sums of float32 blocks around a shift, kept as the float32 values X is scaled with
    np.testing.assert_allclose(p.mean, raw.X_train.mean(axis=0, dtype=np.float64), rtol=1e-6)
    np.testing.assert_allclose(p.scale, raw.X_train.std(axis=0, dtype=np.float64), rtol=1e-6)
    assert np.float32(p.mean).tolist() == list(p.mean) and np.float32(p.scale).tolist() == list(p.scale)
    for split in ("X_train", "X_test"):
        assert np.array_equal(getattr(p, split), preparation.scale_rows(getattr(raw, split), p.mean, p.scale))
    np.testing.assert_allclose(dataset.raw_rows(p, p.X_test), raw.X_test, rtol=1e-5, atol=1e-6)
    if test_size:  # the train split's statistics, not the whole table's
        full = prepared(source("breast_cancer"), tmp_path / "full")
        assert not np.allclose(p.mean, full.X_train.mean(axis=0), rtol=1e-6)
        assert p.X_train.shape[0] + p.X_test.shape[0] == 569


def test_prepared_arrays_map_without_a_copy_and_hash_deterministically(tmp_path):
    import warnings

    import torch

    first = preparation.prepare_dir(tmp_path / "prep", source("breast_cancer"), 0.2, 1, True, "error")
    again = preparation.prepare_dir(tmp_path / "again", source("breast_cancer"), 0.2, 1, True, "error")
    assert first["sha256"] == again["sha256"] and len(first["sha256"]) == 64
    p = dataset.load_prepared(tmp_path / "prep")
    assert isinstance(p.X_train, np.memmap) and p.X_train.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns on read-only arrays
        tensor = torch.from_numpy(p.X_train)
    assert tensor.data_ptr() == p.X_train.ctypes.data  # shared, not copied


def test_failed_write_leaves_earlier_output_intact(tmp_path, monkeypatch):
    tutorial = source(str(REPO / "data/raw/tutorial.csv"))
    preparation.prepare_dir(tmp_path / "prep", tutorial, 0.0, 1, False, "error")
    before = {f.name: f.read_bytes() for f in (tmp_path / "prep").iterdir()}

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        preparation.prepare_dir(tmp_path / "prep", tutorial, 0.0, 1, False, "error")
    assert {f.name: f.read_bytes() for f in (tmp_path / "prep").iterdir()} == before
    assert [f.name for f in tmp_path.iterdir()] == ["prep"]  # no temp leftovers


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_a_write_that_fails_on_the_writers_thread_is_raised_to_the_caller():
    rows = np.ones((1 << 14, 8), dtype=np.float32)  # past the file's buffer: the write reaches the device
    out = preparation.NpyWriter(Path("/dev/full"), 8)
    out.write(rows)  # returns at once: the write runs on the writer's thread
    with pytest.raises(OSError, match="No space left on device"):
        out.write(rows)  # the first write's error, raised at the next call
    with pytest.raises(OSError, match="No space left on device"):
        out.close()  # the second write's; the file is closed all the same
    assert out.fh.closed


def test_csv_and_parquet_stream_in_chunks_with_row_numbers(tmp_path, monkeypatch):
    import pandas as pd

    from pipeline import tables

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"id": np.arange(3000), "a": rng.normal(size=3000), "y": rng.integers(0, 2, 3000)})
    frame["b"] = rng.integers(-5, 5, 3000)
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    monkeypatch.setattr(tables, "CSV_BLOCK_BYTES", 4096)  # many blocks
    monkeypatch.setattr(sources, "CHUNK_ROWS", 256)
    from_csv = prepared(source(str(tmp_path / "t.csv"), features=["b", "a"]), tmp_path / "csv")
    from_parquet = prepared(source(str(tmp_path / "t.parquet"), features=["b", "a"]), tmp_path / "parquet")
    assert from_csv.features == from_parquet.features == ("b", "a")
    expected = frame[["b", "a"]].to_numpy(dtype=np.float32)
    np.testing.assert_array_equal(from_csv.X_train, expected)
    np.testing.assert_array_equal(from_parquet.X_train, expected)
    np.testing.assert_array_equal(from_csv.y_train, frame["y"].to_numpy(np.float32))
    frame.loc[2500, "a"] = np.nan
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    with pytest.raises(tables.TableError, match=r"t.csv, row 2502, column 'a': missing"):
        prepared(source(str(tmp_path / "t.csv")), tmp_path / "bad")
    with pytest.raises(tables.TableError, match=r"t.parquet, row 2501, column 'a': missing"):
        prepared(source(str(tmp_path / "t.parquet")), tmp_path / "bad")
    frame["a"] = frame["a"].astype(object)
    frame.loc[2500, "a"] = 0.5  # the first bad cell in file order is the one reported
    frame.loc[2700, "a"] = "oops"
    frame.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(tables.TableError, match=r"t.csv, row 2702, column 'a': not a number: 'oops'"):
        prepared(source(str(tmp_path / "t.csv")), tmp_path / "bad")
    with pytest.raises(tables.TableError, match=r"prepare.features \['c'\] not in header"):
        source(str(tmp_path / "t.csv"), features=["c"])


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_csv_pieces_parsed_apart_read_as_the_whole_file(tmp_path, monkeypatch, newline):
    from pipeline import tables

    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"a": rng.normal(size=3000).astype(np.float32), "answer": rng.choice(["yes", "no"], 3000)})
    frame["b"] = rng.integers(-5, 5, 3000)
    text = frame.to_csv(index=False, lineterminator=newline)[: -len(newline)]  # no line end after the last row
    (tmp_path / "t.csv").write_text(text, newline="")
    monkeypatch.setattr(tables, "CSV_BLOCK_BYTES", 1000)  # pieces of about 45 lines
    table = prepared(source(str(tmp_path / "t.csv"), label="answer", positive="yes"), tmp_path / "p")
    np.testing.assert_array_equal(table.X_train, frame[["a", "b"]].to_numpy(np.float32))
    np.testing.assert_array_equal(table.y_train, (frame["answer"] == "yes").to_numpy(np.float32))
    # typed by the first piece, the label stays text in later pieces that hold numbers alone: "01" is not "1"
    frame.loc[2000:, "answer"] = "01"
    frame.loc[2999, "answer"] = "1"
    frame.to_csv(tmp_path / "t.csv", index=False)
    table = prepared(source(str(tmp_path / "t.csv"), label="answer", positive="1"), tmp_path / "q")
    assert table.y_train.nonzero()[0].tolist() == [2999]


def test_split_moves_each_row_to_its_split_in_file_order_across_blocks(tmp_path, monkeypatch):

    monkeypatch.setattr(sources, "CHUNK_ROWS", 300)
    monkeypatch.setattr(preparation, "CHUNK_ROWS", 128)  # the standardising pass's blocks, unaligned with chunks
    rng = np.random.default_rng(5)
    frame = pd.DataFrame(rng.normal(size=(2000, 3)).astype(np.float32), columns=["a", "b", "c"])
    frame["y"] = rng.integers(0, 2, 2000)
    frame.to_parquet(tmp_path / "t.parquet")
    is_test = preparation.test_rows(0, 2000, 0.3, seed=4)
    train, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    X, y = frame[["a", "b", "c"]].to_numpy(), frame["y"].to_numpy(np.float32)
    for missing in ("error", "drop"):
        meta = preparation.prepare_dir(tmp_path / missing, source(str(tmp_path / "t.parquet")), 0.3, 4, True, missing)
        p = dataset.load_prepared(tmp_path / missing)
        np.testing.assert_array_equal(p.X_train, preparation.scale_rows(X[train], meta["mean"], meta["scale"]))
        np.testing.assert_array_equal(p.X_test, preparation.scale_rows(X[test], meta["mean"], meta["scale"]))
        np.testing.assert_array_equal(p.y_train, y[train])
        np.testing.assert_array_equal(p.y_test, y[test])
        assert (tmp_path / missing / "X_train-00000.npy").stat().st_size == 128 + 4 * 3 * train.size  # no tail left
        np.testing.assert_allclose(meta["mean"], X[train].mean(axis=0, dtype=np.float64), atol=1e-7)  # float32 shift
        np.testing.assert_allclose(meta["scale"], X[train].std(axis=0, dtype=np.float64), rtol=1e-6)


def test_a_dropped_row_leaves_every_other_rows_split_as_it_was(tmp_path):
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"a": rng.normal(size=400).astype(np.float32), "y": rng.integers(0, 2, 400)})
    frame.to_parquet(tmp_path / "t.parquet")
    whole = preparation.prepare_dir(tmp_path / "whole", source(str(tmp_path / "t.parquet")), 0.5, 1, False, "error")
    frame.loc[4, "a"] = np.nan
    frame.to_parquet(tmp_path / "nan.parquet")
    with pytest.raises(tables.TableError, match=r"nan.parquet, row 5, column 'a': missing, NaN or infinite value"):
        preparation.prepare_dir(tmp_path / "prep", source(str(tmp_path / "nan.parquet")), 0.5, 1, False, "error")
    assert not (tmp_path / "prep").exists()
    meta = preparation.prepare_dir(tmp_path / "drop", source(str(tmp_path / "nan.parquet")), 0.5, 1, False, "drop")
    assert meta["dropped_rows"] == 1 and meta["n_train"] + meta["n_test"] == whole["n_train"] + whole["n_test"] - 1
    original, is_test = frame["a"].to_numpy(np.float32), preparation.test_rows(0, 400, 0.5, 1)
    kept = np.arange(400) != 4
    a, b = dataset.load_prepared(tmp_path / "whole"), dataset.load_prepared(tmp_path / "drop")
    np.testing.assert_array_equal(a.X_train[kept[~is_test], 0], original[~is_test & kept])
    np.testing.assert_array_equal(b.X_train[:, 0], original[~is_test & kept])
    np.testing.assert_array_equal(b.X_test[:, 0], original[is_test & kept])


def test_synthetic_is_a_function_of_seed_and_row_index(tmp_path, monkeypatch):

    def table(n, seed=7, chunk=1 << 16, block=1 << 16):
        monkeypatch.setattr(sources, "CHUNK_ROWS", chunk)
        monkeypatch.setattr(sources, "SYNTHETIC_BLOCK", block)
        return prepared(source("synthetic", n_samples=n, n_features=5, seed=seed), tmp_path / f"{n}-{seed}-{chunk}")

    one = table(1000, block=256)
    assert one.X_train.shape == (1000, 5) and one.features == ("x1", "x2", "x3", "x4", "x5")
    assert 0.3 < one.y_train.mean() < 0.7
    assert not np.array_equal(one.X_train, table(1000, seed=8, block=256).X_train)
    for chunk in (1, 97, 300, 1000):  # read in chunks smaller than, across and larger than the generator blocks
        again = table(1000, chunk=chunk, block=256)
        np.testing.assert_array_equal(again.X_train, one.X_train)
        np.testing.assert_array_equal(again.y_train, one.y_train)
    longer = table(1500, chunk=300, block=256)  # a longer table extends the shorter one
    np.testing.assert_array_equal(longer.X_train[:1000], one.X_train)


def test_read_ahead_keeps_order_raises_at_the_failing_item_and_stops_early():
    from pipeline.tables import TableError, read_ahead

    assert list(read_ahead(iter(range(5)))) == [0, 1, 2, 3, 4]
    assert list(read_ahead(iter([]))) == []

    def failing():
        yield from (1, 2)
        raise TableError("t.csv, row 4, column 'x': not a number: 'a'")

    seen = []
    with pytest.raises(TableError, match="row 4"):
        for item in read_ahead(failing()):
            seen.append(item)
    assert seen == [1, 2]  # the items before the bad one all arrived

    made = []

    def endless():
        while True:
            made.append(len(made))
            yield made[-1]

    ahead = read_ahead(endless())
    assert [next(ahead), next(ahead)] == [0, 1]
    ahead.close()  # a consumer that stops early: the worker finishes the one item in flight and no more
    assert len(made) == 3


def test_outputs_get_the_mode_of_ordinary_new_files(tmp_path):
    """Atomic writes go through temp files (0600, 0700), yet what they leave is readable as any new file is."""
    import os
    import stat

    from pipeline import files

    mask = os.umask(0o022)
    os.umask(mask)
    files.write_text(tmp_path / "a.json", "{}")
    files.write_dir(tmp_path / "d", lambda folder: (folder / "x").write_text("1"))
    with files.replacing(tmp_path / "r.bin") as tmp:
        tmp.write_bytes(b"1")
    mode = {p: stat.S_IMODE((tmp_path / p).stat().st_mode) for p in ("a.json", "d", "r.bin")}
    assert mode == {"a.json": 0o666 & ~mask, "d": 0o777 & ~mask, "r.bin": 0o666 & ~mask}


def test_a_folder_or_glob_of_parquet_files_is_one_table_in_name_order(tmp_path):
    """A partitioned dataset prepares to the same arrays as one file holding its rows in file-name order."""
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(rng.normal(size=(3000, 4)).astype(np.float32), columns=["a", "b", "c", "d"])
    frame["y"] = rng.integers(0, 2, 3000)
    folder = tmp_path / "table"
    (folder / "z=2").mkdir(parents=True)
    frame.iloc[2100:].to_parquet(folder / "z=2" / "part-0.parquet")  # written out of name order: names decide
    frame.iloc[:1200].to_parquet(folder / "part-0.parquet")
    frame.iloc[1200:2100].to_parquet(folder / "part-1.parquet")
    (folder / "_SUCCESS").write_text("")
    frame.to_parquet(tmp_path / "whole.parquet")
    wheres = {"whole": tmp_path / "whole.parquet", "folder": folder, "glob": folder / "**/*.parquet"}
    for standardize in (False, True):
        tables = {}
        for name, where in wheres.items():
            out = tmp_path / f"{name}-{standardize}"
            meta = preparation.prepare_dir(out, source(str(where)), 0.25, 7, standardize, "error")
            assert meta["source"] == str(where)
            tables[name] = dataset.load_prepared(out)
        for name in ("folder", "glob"):
            for array in ("y_train", "y_test") if standardize else ("X_train", "y_train", "X_test", "y_test"):
                assert np.array_equal(getattr(tables[name], array), getattr(tables["whole"], array)), (name, array)
        if standardize:  # the moments sum the rows in blocks that end where the files do: float32 rounding apart
            for name in ("folder", "glob"):
                assert np.allclose(tables[name].X_train, tables["whole"].X_train, rtol=1e-5, atol=1e-6)
                assert np.allclose(tables[name].mean, tables["whole"].mean, rtol=1e-6, atol=1e-7)


def test_a_parquet_dataset_names_the_file_and_its_row(tmp_path):
    folder = tmp_path / "table"
    folder.mkdir()
    good = pd.DataFrame({"a": [1.0, 2.0, 3.0], "y": [0, 1, 0]})
    good.to_parquet(folder / "0.parquet")
    good.assign(y=[1, 0, 2]).to_parquet(folder / "1.parquet")
    with pytest.raises(tables.TableError, match=r"1\.parquet, row 3, column 'y': label must be 0 or 1, got 2"):
        prepared(source(str(folder)), tmp_path / "p")
    good.rename(columns={"a": "b"}).to_parquet(folder / "1.parquet")
    with pytest.raises(tables.TableError, match=r"1\.parquet: feature columns \['b'\] differ from .*0\.parquet's"):
        source(str(folder))
    with pytest.raises(tables.TableError, match="no .parquet file in this folder or glob"):
        source(str(tmp_path / "nothing" / "*.parquet"))


def test_a_part_per_file_and_a_manifest_and_a_reader_of_some_rows_reads_only_their_parts(tmp_path):
    """Parts placed by the files' footers, recorded in the manifest; a DDP rank's rows come from its parts alone."""
    rng = np.random.default_rng(8)
    X = rng.normal(size=(5000, 3)).astype(np.float32) * [1, 4, 9] + [0, 3, -7]
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    frame["y"] = rng.integers(0, 2, 5000)
    folder = tmp_path / "table"
    folder.mkdir()
    for i, (lo, hi) in enumerate([(0, 2000), (2000, 3100), (3100, 5000)]):
        frame.iloc[lo:hi].to_parquet(folder / f"{i}.parquet")
    meta = preparation.prepare_dir(tmp_path / "p", source(str(folder)), 0.25, 3, True, "error")
    parts = meta["parts"]
    assert [(p["source"], p["first_row"], p["rows"]) for p in parts] == [
        (str(folder / "0.parquet"), 0, 2000),
        (str(folder / "1.parquet"), 2000, 1100),
        (str(folder / "2.parquet"), 3100, 1900),
    ]
    is_test = preparation.test_rows(0, 5000, 0.25, seed=3)
    assert [p["test"] for p in parts] == [int(is_test[p["first_row"] :][: p["rows"]].sum()) for p in parts]
    assert sum(p["train"] for p in parts) == meta["n_train"] == int((~is_test).sum())
    train = frame[["a", "b", "c"]].to_numpy(np.float64)[~is_test]
    np.testing.assert_allclose(meta["mean"], train.mean(axis=0), rtol=1e-6, atol=1e-6)  # merged across the parts
    np.testing.assert_allclose(meta["scale"], train.std(axis=0), rtol=1e-6)
    one = preparation.Moments(3)
    one.merge(parts[0]["moments"])
    assert one.state() == parts[0]["moments"]  # a part merged alone is its own sums, bit for bit

    whole = dataset.load_prepared(tmp_path / "p")
    assert whole.X_train.shape == (meta["n_train"], 3) and whole.X_test.shape == (meta["n_test"], 3)
    in_first_two = parts[0]["train"] + parts[1]["train"]
    (tmp_path / "p" / "X_train-00002.npy").unlink()  # a rank whose rows are in parts 0 and 1 never opens part 2
    rank = replace(dataset.load_prepared(tmp_path / "p"), train_rows=slice(100, in_first_two))
    assert np.array_equal(rank.X_train, whole.X_train[100:in_first_two])
    assert np.array_equal(rank.y_train, whole.y_train[100:in_first_two])
    with pytest.raises(FileNotFoundError, match="X_train-00002.npy"):
        _ = replace(dataset.load_prepared(tmp_path / "p"), train_rows=slice(100, in_first_two + 1)).X_train
