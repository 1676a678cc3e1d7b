"""The champion gate, pure: no worse than the baseline, and better than the champion by a paired test.

Both models are scored on the same evaluation rows, so the comparison is paired. The interval is of
the difference `challenger - champion`, oriented so that > 0 is better for the challenger; only an
interval wholly above 0 is evidence. A tie (an interval that holds 0) is not an improvement.

- roc_auc: DeLong's variance of the difference of two correlated AUCs (normal interval), O(n log n).
- accuracy, precision, recall, f1: a paired bootstrap. These depend only on how many rows fall in each
  of the 8 cells (label, challenger's label, champion's label), and resampling rows with replacement
  draws those counts from a multinomial: the exact bootstrap at O(resamples), whatever the rows.
- log_loss: a paired bootstrap of the mean per-row difference while rows x resamples stays under
  BOOTSTRAP_BUDGET; beyond that the normal interval of that mean (what the bootstrap converges to).
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from pipeline.metrics import from_confusion, midranks, roc_auc, row_log_loss
from pipeline.params import METRICS

BOOTSTRAP_BUDGET = 1 << 24  # row draws for an exact log_loss bootstrap (16M: a second or so)


@dataclass(frozen=True)
class Evidence:
    """A paired comparison of challenger and champion on the same rows."""

    metric: str
    method: str
    n: int
    challenger: float
    champion: float
    delta: float  # challenger - champion, signed so that > 0 is better for the challenger
    low: float
    high: float
    level: float
    resamples: int | None = None
    seed: int | None = None

    def interval(self) -> str:
        """E.g. `+0.0123 [+0.0040, +0.0210] (95%, bootstrap)`."""
        return f"{self.delta:+.6f} [{self.low:+.6f}, {self.high:+.6f}] ({self.level:.0%}, {self.method})"


@dataclass(frozen=True)
class Decision:
    """Whether the version becomes champion, why in words, and the numbers behind it."""

    promote: bool
    reason: str
    metric: str
    model: float
    baseline: float
    tolerance: float
    champion_version: str | None = None
    evidence: Evidence | None = None


def _better(metric: str) -> float:
    return 1.0 if METRICS[metric] else -1.0


def paired_evidence(
    metric: str,
    y: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray,
    thresholds: tuple[float, float],
    level: float,
    resamples: int,
    seed: int,
) -> Evidence:
    """The interval of `metric(challenger) - metric(champion)` over the same rows (see the module doc).

    `thresholds` are the models' own label thresholds (challenger's, champion's).
    """
    y = np.asarray(y).astype(np.int64)
    a, b = np.asarray(challenger, dtype=np.float64), np.asarray(champion, dtype=np.float64)
    z = NormalDist().inv_cdf((1 + level) / 2)
    sign = _better(metric)
    if metric == "roc_auc":
        value_a, value_b, variance = _delong(y, a, b)
        delta = value_a - value_b
        half = z * np.sqrt(max(variance, 0.0))
        return Evidence(metric, "DeLong", y.size, value_a, value_b, delta, delta - half, delta + half, level)
    rng = np.random.default_rng(seed)
    tail = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    if metric == "log_loss":
        loss_a, loss_b = row_log_loss(y, a), row_log_loss(y, b)
        gain = loss_b - loss_a  # lower loss is better
        delta = float(gain.mean())
        if y.size * resamples <= BOOTSTRAP_BUDGET:
            low, high = np.percentile(_bootstrap_means(gain, resamples, rng), tail)
            method = "bootstrap"
        else:
            half = z * float(gain.std(ddof=1)) / np.sqrt(y.size)
            low, high, method = delta - half, delta + half, "normal"
        value_a, value_b = float(loss_a.mean()), float(loss_b.mean())
        interval = (delta, float(low), float(high), level, resamples, seed)
        return Evidence(metric, method, y.size, value_a, value_b, *interval)
    cells = np.bincount(4 * y + 2 * (a >= thresholds[0]) + (b >= thresholds[1]), minlength=8)
    draws = rng.multinomial(y.size, cells / y.size, size=resamples).reshape(resamples, 2, 2, 2)
    joint = cells.reshape(2, 2, 2)
    value_a = float(from_confusion(joint.sum(axis=2))[metric])
    value_b = float(from_confusion(joint.sum(axis=1))[metric])
    deltas = from_confusion(draws.sum(axis=3))[metric] - from_confusion(draws.sum(axis=2))[metric]
    low, high = np.percentile(sign * deltas, tail)
    interval = (sign * (value_a - value_b), float(low), float(high), level, resamples, seed)
    return Evidence(metric, "bootstrap", y.size, value_a, value_b, *interval)


def _bootstrap_means(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of `resamples` resamples with replacement, a block of resamples at a time (bounded memory)."""
    means = np.empty(resamples)
    block = max(1, (1 << 22) // values.size)
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        means[start:stop] = values[rng.integers(0, values.size, (stop - start, values.size))].mean(axis=1)
    return means


def _delong(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """AUC of a, AUC of b, and the variance of their difference (DeLong et al. 1988; Sun and Xu 2014)."""
    positive, negative = y == 1, y == 0
    m, n = int(positive.sum()), int(negative.sum())
    v10, v01 = [], []  # per-positive and per-negative placement values of each model
    for scores in (a, b):
        ranks = midranks(np.concatenate([scores[positive], scores[negative]]))
        ranks_pos = midranks(scores[positive])
        ranks_neg = midranks(scores[negative])
        v10.append((ranks[:m] - ranks_pos) / n)
        v01.append(1.0 - (ranks[m:] - ranks_neg) / m)
    s10 = np.atleast_2d(np.cov(np.vstack(v10))) if m > 1 else np.zeros((2, 2))
    s01 = np.atleast_2d(np.cov(np.vstack(v01))) if n > 1 else np.zeros((2, 2))
    contrast = np.array([1.0, -1.0])
    variance = float(contrast @ s10 @ contrast / m + contrast @ s01 @ contrast / n)
    return roc_auc(y, a), roc_auc(y, b), variance


def decide(
    metric: str,
    model: float,
    baseline: float,
    tolerance: float,
    evidence: Evidence | None = None,
    champion_version: str | None = None,
) -> Decision:
    """Champion only if no worse than the baseline (within tolerance) and, when there is a champion, better."""
    facts = dict(metric=metric, model=model, baseline=baseline, tolerance=tolerance)
    facts.update(champion_version=champion_version, evidence=evidence)
    if _better(metric) * (model - baseline) < -tolerance:
        why = f"{metric} {model:.6f} is worse than the baseline's {baseline:.6f} by more than {tolerance}"
        return Decision(False, why, **facts)
    if evidence is None:
        why = f"first champion: {metric} {model:.6f} is no worse than the baseline's {baseline:.6f}"
        why += f" (tolerance {tolerance})"
        return Decision(True, why, **facts)
    versus = f"champion v{champion_version} on the same {evidence.n} rows: {metric} {evidence.interval()}"
    if evidence.low > 0:
        return Decision(True, f"better than {versus}", **facts)
    if evidence.delta == 0 and evidence.low == evidence.high:
        return Decision(False, f"a tie with {versus}; a tie is not an improvement", **facts)
    return Decision(False, f"not shown better than {versus}: the interval does not exclude 0", **facts)
