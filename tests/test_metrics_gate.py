from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics

from pipeline import gate
from pipeline.lineage import FAMILIES
from pipeline.metrics import cost_and_accuracy, evaluation, fit_baseline
from pipeline.params import BaselineParams, ClusterParams
from pipeline.store import location
from pipeline.workspace import project_root

from .conftest import prepared


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
    ours, _ = evaluation(y, proba, 0.5)
    assert ours.keys() == reference.keys()
    for key, value in reference.items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key
    cost, accuracy = cost_and_accuracy(y, proba, 0.5)  # a training history's pair, without the ranking
    assert cost == ours["log_loss"] and accuracy == ours["accuracy"]


def test_baseline_is_scikit_learn_logistic_regression():
    X = np.array([[1, 2], [2, 3], [3, 1], [4, 3], [5, 3], [6, 2]], dtype=np.float32)
    y = np.array([0, 0, 0, 1, 1, 1], dtype=np.float32)
    model = fit_baseline(X, y, BaselineParams(C=1.0, max_iter=1000, solver="lbfgs"))
    assert type(model).__name__ == "LogisticRegression" and model.C == 1.0
    assert (model.predict(X) == y).all()


def test_evaluate_scores_both_models_and_refuses_a_model_for_other_features(tmp_path):
    import re

    from pipeline.model import BinaryClassifier, ModelConfig, checkpoint_bytes
    from pipeline.scoring import compare
    from pipeline.sources import open_source

    tutorial = open_source(str(Path(__file__).resolve().parents[1] / "data/raw/tutorial.csv"), "y", None, 0, 0, 1, None)
    prepared(tutorial, tmp_path / "prep")
    params, model = BaselineParams(C=1.0, max_iter=1000, solver="lbfgs"), tmp_path / "model.pt"
    here = ClusterParams(engine="local", address=None, workers=None)
    model.write_bytes(checkpoint_bytes(BinaryClassifier(2), ModelConfig(2, ("x1", "x2"), 0.5)))
    emitted = []
    figures = compare(emitted.append, tmp_path / "prep", model, params, here)
    (scored,) = emitted
    assert set(figures) == set(FAMILIES) and all(
        png.startswith(b"\x89PNG") for f in figures.values() for png in f.values()
    )
    assert scored.rows == 6 and scored.metrics["baseline"]["accuracy"] == 1.0
    assert set(scored.metrics) == set(FAMILIES) and set(scored.curves) == set(FAMILIES.values())
    # found on the scoring thread, raised once the baseline's fit is done
    model.write_bytes(checkpoint_bytes(BinaryClassifier(2), ModelConfig(2, ("x2", "x1"), 0.5)))
    with pytest.raises(ValueError, match=re.escape(f"{model}: model features ('x2', 'x1') != prepared")):
        compare(emitted.append, tmp_path / "prep", model, params, here)


def test_project_root_anchoring(tmp_path):
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "sub").mkdir()
    assert project_root({}, tmp_path / "sub") == tmp_path
    exp = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc"
    exp.mkdir(parents=True)
    assert project_root({"DVC_ROOT": str(exp)}, Path("/")) == tmp_path


def test_store_location(tmp_path):
    assert location.tracking_uri(tmp_path, {}) == f"sqlite:///{tmp_path}/mlflow.db"
    assert location.tracking_uri(tmp_path, {"MLFLOW_TRACKING_URI": "http://h:5000"}) == "http://h:5000"
    assert location.artifact_location(f"sqlite:///{tmp_path}/mlflow.db") == (tmp_path / "mlartifacts").as_uri()
    assert location.artifact_location("http://h:5000") is None


# ---------------------------------------------------------------- the gate's paired evidence
def correlated_scores(n: int, seed: int, gap: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and two models' probabilities that share most of their signal (as challenger and champion do)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    shared = rng.normal(size=n)
    a = 1 / (1 + np.exp(-(1.5 * (2 * y - 1) + shared + 0.5 * rng.normal(size=n))))
    b = 1 / (1 + np.exp(-((1.5 - gap) * (2 * y - 1) + shared + 0.5 * rng.normal(size=n))))
    return y, a, b


def row_bootstrap(metric, y, a, b, resamples=1000, seed=0):
    """The reference: resample rows with replacement and recompute both metrics with scikit-learn."""
    rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(resamples):
        i = rng.integers(0, y.size, y.size)
        deltas.append(metric(y[i], a[i]) - metric(y[i], b[i]))
    return np.array(deltas)


def test_delong_matches_a_bootstrap_of_scikit_learns_auc():
    y, a, b = correlated_scores(600, seed=1, gap=0.3)
    evidence = gate.paired_evidence("roc_auc", y, a, b, (0.5, 0.5), 0.95, 1000, 1)
    assert evidence.method == "DeLong" and evidence.n == 600
    assert evidence.challenger == pytest.approx(metrics.roc_auc_score(y, a), abs=1e-12)
    assert evidence.delta == pytest.approx(metrics.roc_auc_score(y, a) - metrics.roc_auc_score(y, b), abs=1e-12)
    reference = row_bootstrap(metrics.roc_auc_score, y, a, b)
    half = (evidence.high - evidence.low) / 2
    assert half / 1.96 == pytest.approx(reference.std(), rel=0.15)  # DeLong's standard error ~ the bootstrap's


@pytest.mark.parametrize("metric", ["accuracy", "f1", "precision", "recall"])
def test_joint_table_bootstrap_is_the_row_bootstrap(metric):
    y, a, b = correlated_scores(500, seed=2, gap=0.4)
    reference_metric = {
        "accuracy": lambda t, p: metrics.accuracy_score(t, p >= 0.5),
        "f1": lambda t, p: metrics.f1_score(t, p >= 0.5),
        "precision": lambda t, p: metrics.precision_score(t, p >= 0.5, zero_division=0),
        "recall": lambda t, p: metrics.recall_score(t, p >= 0.5),
    }[metric]
    evidence = gate.paired_evidence(metric, y, a, b, (0.5, 0.5), 0.9, 4000, 3)
    assert evidence.method == "bootstrap" and evidence.resamples == 4000 and evidence.seed == 3
    assert evidence.challenger == pytest.approx(reference_metric(y, a), abs=1e-12)
    reference = row_bootstrap(reference_metric, y, a, b, resamples=1000)
    low, high = np.percentile(reference, [5, 95])
    assert evidence.low == pytest.approx(low, abs=0.01) and evidence.high == pytest.approx(high, abs=0.01)


def test_log_loss_bootstrap_and_its_normal_limit_agree():
    y, a, b = correlated_scores(2000, seed=4, gap=0.5)
    exact = gate.paired_evidence("log_loss", y, a, b, (0.5, 0.5), 0.95, 2000, 5)
    assert exact.method == "bootstrap" and exact.delta > 0  # lower loss is better: positive = challenger better
    assert exact.challenger == pytest.approx(metrics.log_loss(y, a), abs=1e-12)
    import pipeline.gate

    budget = pipeline.gate.BOOTSTRAP_BUDGET
    pipeline.gate.BOOTSTRAP_BUDGET = 0
    try:
        normal = gate.paired_evidence("log_loss", y, a, b, (0.5, 0.5), 0.95, 2000, 5)
    finally:
        pipeline.gate.BOOTSTRAP_BUDGET = budget
    assert normal.method == "normal" and normal.delta == exact.delta
    assert normal.low == pytest.approx(exact.low, abs=0.01) and normal.high == pytest.approx(exact.high, abs=0.01)


def test_evidence_is_seeded():
    y, a, b = correlated_scores(300, seed=6, gap=0.2)
    first = gate.paired_evidence("f1", y, a, b, (0.5, 0.5), 0.95, 1000, 7)
    assert first == gate.paired_evidence("f1", y, a, b, (0.5, 0.5), 0.95, 1000, 7)
    assert first != gate.paired_evidence("f1", y, a, b, (0.5, 0.5), 0.95, 1000, 8)


def test_decisions():
    y, a, b = correlated_scores(2000, seed=8, gap=0.8)
    better = gate.paired_evidence("roc_auc", y, a, b, (0.5, 0.5), 0.95, 1000, 1)
    worse = gate.paired_evidence("roc_auc", y, b, a, (0.5, 0.5), 0.95, 1000, 1)
    same = gate.paired_evidence("roc_auc", y, a, a, (0.5, 0.5), 0.95, 1000, 1)
    assert gate.decide("roc_auc", 0.9, 0.9, 0.01).promote  # first champion: the baseline check alone
    refused = gate.decide("roc_auc", 0.8, 0.9, 0.05)
    assert not refused.promote and "worse than the baseline" in refused.reason
    assert not gate.decide("log_loss", 0.30, 0.20, 0.05).promote  # lower is better
    assert better.low > 0 and gate.decide("roc_auc", 0.9, 0.9, 0.01, better, "3").promote
    assert not gate.decide("roc_auc", 0.9, 0.9, 0.01, worse, "3").promote
    tie = gate.decide("roc_auc", 0.9, 0.9, 0.01, same, "3")
    assert not tie.promote and "a tie is not an improvement" in tie.reason
    # better than the champion, but not within the baseline's tolerance: still refused
    assert not gate.decide("roc_auc", 0.8, 0.9, 0.01, better, "3").promote
