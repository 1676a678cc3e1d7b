from pathlib import Path

import numpy as np
import pytest

from pipeline import data

REPO = Path(__file__).resolve().parents[1]


def csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "t.csv"
    path.write_text(text)
    return path


def test_tutorial_csv():
    table = data.read_csv(REPO / "data/raw/tutorial.csv", "y")
    assert table.features == ("x1", "x2")
    assert table.X.dtype == np.float32 and table.X.tolist() == [[1, 2], [2, 3], [3, 1], [4, 3], [5, 3], [6, 2]]
    assert table.y.tolist() == [0, 0, 0, 1, 1, 1]


def test_label_column_may_be_anywhere(tmp_path):
    table = data.read_csv(csv(tmp_path, "target,a,b\n0,1,2\n1,3,4\n"), "target")
    assert table.features == ("a", "b") and table.X.tolist() == [[1, 2], [3, 4]]


@pytest.mark.parametrize(
    ("text", "label", "message"),
    [
        ("x1,x2,y\n1,2,0\n2,abc,1\n", "y", r"t.csv, row 3, column 'x2': not a number: 'abc'"),
        ("x1,x2,y\n1,2,0\n2,nan,1\n", "y", r"t.csv, row 3, column 'x2': NaN or infinite"),
        ("x1,x2,y\n1,inf,0\n2,3,1\n", "y", r"t.csv, row 2, column 'x2': NaN or infinite"),
        ("x1,x2,y\n1,2,0\n2,3,2\n", "y", r"t.csv, row 3, column 'y': label must be 0 or 1, got 2"),
        ("x1,x2,y\n1,2,1\n2,3,1\n", "y", r"t.csv, column 'y': only one class"),
        ("x1,x2,y\n1,2,1\n", "y", r"t.csv: need at least two rows"),
        ("x1,x2,y\n1,2,1\n2,3\n", "y", r"t.csv, row 3: expected 3 columns, got 2"),
        ("x1,x2\n1,2\n", "y", r"t.csv: label column 'y' not in header"),
        ("", "y", r"t.csv: empty file"),
        ("y\n0\n1\n", "y", r"t.csv: no feature columns"),
    ],
)
def test_bad_csv_names_file_row_and_column(tmp_path, text, label, message):
    with pytest.raises(data.DataError, match=message):
        data.read_csv(csv(tmp_path, text), label)


def test_missing_file(tmp_path):
    with pytest.raises(data.DataError, match="absent.csv: file not found"):
        data.load_source(str(tmp_path / "absent.csv"), "y")


def test_breast_cancer_is_bundled():
    table = data.load_source("breast_cancer", "y")
    assert table.X.shape == (569, 30) and set(np.unique(table.y)) == {0.0, 1.0}


def test_split_is_stratified_seeded_and_disjoint():
    y = np.array([0] * 60 + [1] * 40, dtype=np.float32)
    train, test = data.stratified_split(y, 0.25, seed=3)
    again, _ = data.stratified_split(y, 0.25, seed=3)
    other, _ = data.stratified_split(y, 0.25, seed=4)
    assert np.array_equal(train, again) and not np.array_equal(train, other)
    assert set(train).isdisjoint(test) and len(train) + len(test) == 100
    assert (y[test] == 0).sum() == 15 and (y[test] == 1).sum() == 10


def test_split_that_empties_a_class_is_an_error():
    y = np.array([0, 0, 0, 1, 1, 1], dtype=np.float32)
    with pytest.raises(data.DataError, match="data.test_size=0.1 leaves class 0"):
        data.stratified_split(y, 0.1, seed=1)


def test_test_size_zero_evaluates_on_train():
    table = data.read_csv(REPO / "data/raw/tutorial.csv", "y")
    p = data.prepare(table, 0.0, seed=1, standardize=False)
    assert p.evaluated_on == "train" and np.array_equal(p.X_test, p.X_train) and p.mean is None


def test_standardizer_is_fitted_on_train_only():
    table = data.load_source("breast_cancer", "y")
    p = data.prepare(table, 0.2, seed=1, standardize=True)
    assert np.allclose(p.mean, p.X_train.mean(axis=0), rtol=1e-5)
    assert not np.allclose(p.mean, table.X.mean(axis=0), rtol=1e-6)


def test_save_load_roundtrip_and_hash(tmp_path):
    table = data.load_source("breast_cancer", "y")
    p = data.prepare(table, 0.2, seed=1, standardize=True)
    digest = data.save_prepared(tmp_path / "prep", p)
    back = data.load_prepared(tmp_path / "prep")
    assert back.sha256 == digest and back.features == p.features and back.mean == p.mean
    for name in ("X_train", "y_train", "X_test", "y_test"):
        assert np.array_equal(getattr(back, name), getattr(p, name))
    assert data.save_prepared(tmp_path / "again", p) == digest  # deterministic


def test_failed_write_leaves_earlier_output_intact(tmp_path, monkeypatch):
    table = data.read_csv(REPO / "data/raw/tutorial.csv", "y")
    p = data.prepare(table, 0.0, seed=1, standardize=False)
    data.save_prepared(tmp_path / "prep", p)
    before = {f.name: f.read_bytes() for f in (tmp_path / "prep").iterdir()}

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        data.save_prepared(tmp_path / "prep", p)
    assert {f.name: f.read_bytes() for f in (tmp_path / "prep").iterdir()} == before
    assert [f.name for f in tmp_path.iterdir()] == ["prep"]  # no temp leftovers
