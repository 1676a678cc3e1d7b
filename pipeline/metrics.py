"""Evaluation math, pure: one metric set for every model, curves on a fixed grid, and the baseline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.params import METRICS, BaselineParams

if TYPE_CHECKING:  # sklearn is slow to import: only the baseline and the curves need it
    from sklearn.linear_model import LogisticRegression

GRID = np.linspace(0.0, 1.0, 101)  # FPR and recall points of the stored curves: fixed size whatever the rows
CALIBRATION_BINS = 10
# The baseline fits on a float64 copy of the train split up to this size (256 MiB of float64 features): in
# float32, L-BFGS stops at points that differ with the CPU's BLAS kernels, in float64 it stops at the same one.
# Beyond it, the split is fit as it is (float32) to keep memory bounded.
BASELINE_FLOAT64_BYTES = 256 << 20
RECORDED_DIGITS = 12  # significant digits of a recorded metric: what every CPU computes alike


def midranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank (what Mann-Whitney and DeLong count)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], values.size]
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def roc_auc(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Area under the ROC curve as the Mann-Whitney U statistic, ties counted half."""
    ranks = midranks(proba)
    n_pos = int(y_true.sum())
    n_neg = y_true.size - n_pos
    return float((ranks[y_true == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def row_log_loss(y_true: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Each row's log loss, probabilities clipped as scikit-learn clips them.

    -log(p) where the label is 1, -log(1 - p) where it is 0: the bits of -(y log p + (1 - y) log(1 - p)) for
    0/1 labels, in one float64 array instead of ten temporaries.
    """
    eps = np.finfo(np.float64).eps
    loss = np.clip(np.asarray(proba, dtype=np.float64), eps, 1 - eps)
    np.subtract(1.0, loss, out=loss, where=np.asarray(y_true) != 1)
    np.log(loss, out=loss)
    return np.negative(loss, out=loss)


def confusion(y_true: np.ndarray, proba: np.ndarray, threshold: float) -> np.ndarray:
    """[[tn, fp], [fn, tp]] at the threshold, as int64 counts."""
    y = np.asarray(y_true).astype(np.int64)
    pred = (np.asarray(proba) >= threshold).astype(np.int64)
    return np.bincount(2 * y + pred, minlength=4).reshape(2, 2)


def from_confusion(counts: np.ndarray) -> dict[str, np.ndarray]:
    """accuracy, precision, recall, f1 from [..., 2, 2] confusion counts (0 where undefined), vectorised."""
    tn, fp, fn, tp = (counts[..., i, j].astype(np.float64) for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "accuracy": (tp + tn) / (tp + tn + fp + fn),
            "precision": np.where(tp + fp > 0, tp / (tp + fp), 0.0),
            "recall": np.where(tp + fn > 0, tp / (tp + fn), 0.0),
            "f1": np.where(tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0),
        }


def cost_and_accuracy(y_true: np.ndarray, proba: np.ndarray, threshold: float) -> tuple[float, float]:
    """Mean log loss and accuracy, what a training history records: no ranking (sorting 8M rows takes seconds)."""
    y = np.asarray(y_true).astype(np.int64)
    p = np.asarray(proba, dtype=np.float64)
    return float(np.mean(row_log_loss(y, p))), float(np.mean((p >= threshold) == y))


@dataclass(frozen=True)
class Curves:
    """One model's evaluation curves in a bounded size: ROC and precision-recall on GRID, calibration bins."""

    tpr: np.ndarray  # true positive rate at each false positive rate of GRID (the ROC's upper step)
    precision: np.ndarray  # interpolated precision at each recall of GRID (max precision at recall >= r)
    calibration: np.ndarray  # fraction of positives per predicted-probability bin (NaN: an empty bin)
    confusion: np.ndarray  # [[tn, fp], [fn, tp]]


def evaluation(y_true: np.ndarray, proba: np.ndarray, threshold: float) -> tuple[dict[str, float], Curves]:
    """The metrics (accuracy, log_loss, roc_auc, f1, precision, recall) and curves of probabilities of class 1.

    ROC and precision-recall are scikit-learn's, roc_auc the area under that ROC (as roc_auc_score takes it:
    ties count half); reduced to fixed-size arrays. One sort for the ROC and one for precision-recall: ranking
    the rows again for the AUC cost more than both sorts.
    """
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    y = np.asarray(y_true).astype(np.int64)
    p = np.asarray(proba, dtype=np.float64)
    counts = confusion(y, p, threshold)
    fpr, tpr, _ = roc_curve(y, p)
    counted = {k: float(v) for k, v in from_confusion(counts).items()}
    result = {"log_loss": float(np.mean(row_log_loss(y, p))), "roc_auc": float(auc(fpr, tpr)), **counted}
    assert result.keys() == METRICS.keys()  # the gate picks its metric from METRICS
    at_fpr = np.searchsorted(fpr, GRID, side="right") - 1  # the last ROC point at or left of each grid FPR
    precision, recall, _ = precision_recall_curve(y, p)  # recall comes decreasing: reversed, it is sorted
    best_to_the_right = np.maximum.accumulate(precision)[::-1]  # max precision at recall >= r, by rising recall
    at_recall = np.clip(np.searchsorted(recall[::-1], GRID, side="left"), 0, recall.size - 1)
    bins = np.minimum((p * CALIBRATION_BINS).astype(np.int64), CALIBRATION_BINS - 1)
    count = np.bincount(bins, minlength=CALIBRATION_BINS)
    positives = np.bincount(bins, weights=y, minlength=CALIBRATION_BINS)
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.where(count > 0, positives / count, np.nan)
    curves = Curves(tpr[at_fpr], best_to_the_right[at_recall], fraction, counts)
    return {k: result[k] for k in METRICS}, curves


def bin_centers() -> np.ndarray:
    """The predicted probability each calibration bin stands for."""
    return (np.arange(CALIBRATION_BINS) + 0.5) / CALIBRATION_BINS


def fit_baseline(X: np.ndarray, y: np.ndarray, params: BaselineParams) -> LogisticRegression:
    """scikit-learn's LogisticRegression on the same (standardised) prepared train split."""
    import sklearn
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=params.C, max_iter=params.max_iter, solver=params.solver)
    if X.dtype != np.float64 and X.shape[0] * X.shape[1] * 8 <= BASELINE_FLOAT64_BYTES:
        X = X.astype(np.float64)
    with sklearn.config_context(assume_finite=True):  # prepared arrays: prepare refused what is not finite
        return model.fit(X, np.asarray(y).astype(int))


def recorded(metrics: dict[str, float]) -> dict[str, float]:
    """Metrics as the metrics file and MLflow record them: to RECORDED_DIGITS significant digits.

    The last bits of a BLAS kernel's sums then do not make another CPU's record differ.
    """
    return {k: float(f"{v:.{RECORDED_DIGITS}g}") for k, v in metrics.items()}


def baseline_proba(model: LogisticRegression, X: np.ndarray) -> np.ndarray:
    """Each row's probability of label 1, the same bits whatever batch or Ray task the row is scored in.

    From the fitted coefficients with the BinaryClassifier's own in-order sums (pipeline.model.linear_logits),
    not scikit-learn's BLAS product. classes_ is [0, 1] (sorted, both present: prepare checked), so coef_ is 1's.
    """
    from pipeline.model import linear_logits, sigmoid

    X = np.ascontiguousarray(X, dtype=np.float32)
    return sigmoid(linear_logits(np.asarray(model.coef_[0], dtype=np.float64), float(model.intercept_[0]), X))
