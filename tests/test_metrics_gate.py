from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics

from pipeline import store
from pipeline.metrics import fit_baseline, scores
from pipeline.params import BaselineParams
from pipeline.stages import project_root


@pytest.mark.parametrize("n", [6, 57, 1000])
def test_scores_match_scikit_learn(n):
    rng = np.random.default_rng(n)
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    proba = np.round(rng.random(n), 2)  # rounded: plenty of ties for roc_auc
    pred = (proba >= 0.5).astype(int)
    reference = {
        "accuracy": metrics.accuracy_score(y, pred),
        "log_loss": metrics.log_loss(y, proba, labels=[0, 1]),
        "roc_auc": metrics.roc_auc_score(y, proba),
        "f1": metrics.f1_score(y, pred),
        "precision": metrics.precision_score(y, pred),
        "recall": metrics.recall_score(y, pred),
    }
    ours = scores(y, proba, 0.5)
    assert ours.keys() == reference.keys()
    for key, value in reference.items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key


def test_baseline_is_scikit_learn_logistic_regression():
    X = np.array([[1, 2], [2, 3], [3, 1], [4, 3], [5, 3], [6, 2]], dtype=np.float32)
    y = np.array([0, 0, 0, 1, 1, 1], dtype=np.float32)
    model = fit_baseline(X, y, BaselineParams(C=1.0, max_iter=1000, solver="lbfgs"))
    assert type(model).__name__ == "LogisticRegression" and model.C == 1.0
    assert (model.predict(X) == y).all()


def test_project_root_anchoring(tmp_path):
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "sub").mkdir()
    assert project_root({}, tmp_path / "sub") == tmp_path
    exp = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc"
    exp.mkdir(parents=True)
    assert project_root({"DVC_ROOT": str(exp)}, Path("/")) == tmp_path


def test_store_location(tmp_path):
    assert store.tracking_uri(tmp_path, {}) == f"sqlite:///{tmp_path}/mlflow.db"
    assert store.tracking_uri(tmp_path, {"MLFLOW_TRACKING_URI": "http://h:5000"}) == "http://h:5000"
    assert store.artifact_location(f"sqlite:///{tmp_path}/mlflow.db") == (tmp_path / "mlartifacts").as_uri()
    assert store.artifact_location("http://h:5000") is None
