"""One metric set for both models (numpy only), and the scikit-learn LogisticRegression baseline."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pipeline.params import METRICS, BaselineParams

if TYPE_CHECKING:  # sklearn costs ~1 s to import: only the baseline needs it
    from sklearn.linear_model import LogisticRegression


def roc_auc(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Area under the ROC curve as the Mann-Whitney U statistic, ties counted half."""
    order = np.argsort(proba, kind="mergesort")
    sorted_p = proba[order]
    ranks = np.empty(proba.size, dtype=np.float64)
    # Average rank within each run of tied probabilities.
    starts = np.flatnonzero(np.r_[True, sorted_p[1:] != sorted_p[:-1]])
    ends = np.r_[starts[1:], proba.size]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    n_pos = int(y_true.sum())
    n_neg = y_true.size - n_pos
    return float((ranks[y_true == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def scores(y_true: np.ndarray, proba: np.ndarray, threshold: float) -> dict[str, float]:
    """accuracy, log_loss, roc_auc, f1, precision, recall from probabilities of class 1."""
    y = np.asarray(y_true).astype(np.int64)
    p = np.asarray(proba, dtype=np.float64)
    pred = p >= threshold
    tp = float(np.sum(pred & (y == 1)))
    fp = float(np.sum(pred & (y == 0)))
    fn = float(np.sum(~pred & (y == 1)))
    eps = np.finfo(np.float64).eps  # scikit-learn's clipping
    clipped = np.clip(p, eps, 1 - eps)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    result = {
        "accuracy": float(np.mean(pred == (y == 1))),
        "log_loss": float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))),
        "roc_auc": roc_auc(y, p),
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        "precision": precision,
        "recall": recall,
    }
    assert result.keys() == METRICS.keys()  # the gate picks its metric from METRICS
    return result


def fit_baseline(X: np.ndarray, y: np.ndarray, params: BaselineParams) -> LogisticRegression:
    """scikit-learn's LogisticRegression on the same (standardised) train split."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=params.C, max_iter=params.max_iter, solver=params.solver)
    return model.fit(X, np.asarray(y).astype(int))


def baseline_proba(model: LogisticRegression, X: np.ndarray) -> np.ndarray:
    """Probability of class 1."""
    return model.predict_proba(X)[:, list(model.classes_).index(1)]
