"""Evaluation figures, pure: DVC plot tables and PNG figures from the models' fixed-size curves.

The PNGs are drawn with matplotlib's object API (Figure + Agg canvas), not pyplot or scikit-learn's
Display classes, which need pyplot: importing pyplot costs several times the object API, on a stage
whose whole budget is a few seconds. The curves themselves are scikit-learn's (pipeline.metrics.evaluation).
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

from pipeline.metrics import GRID, Curves, bin_centers

TABLES = ("roc", "precision_recall", "calibration", "confusion")  # plots/<name>.json and <name>.png
PERFECT = "perfectly calibrated"


def _number(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)


def tables(curves: dict[str, Curves]) -> dict[str, list[dict[str, Any]]]:
    """One JSON table per plot, a column per model (what dvc.yaml's plots declare)."""
    centers = bin_centers()
    return {
        "roc": [{"fpr": _number(g), **{k: _number(c.tpr[i]) for k, c in curves.items()}} for i, g in enumerate(GRID)],
        "precision_recall": [
            {"recall": _number(g), **{k: _number(c.precision[i]) for k, c in curves.items()}}
            for i, g in enumerate(GRID)
        ],
        "calibration": [
            {"predicted": _number(x), PERFECT: _number(x), **{k: _number(c.calibration[i]) for k, c in curves.items()}}
            for i, x in enumerate(centers)
        ],
        "confusion": [
            {"family": k, "actual": a, "predicted": p, "count": int(c.confusion[a, p])}
            for k, c in curves.items()
            for a in (0, 1)
            for p in (0, 1)
        ],
    }


def from_tables(data: dict[str, list[dict[str, Any]]]) -> dict[str, Curves]:
    """The curves back from the tables() of an evaluation (for the report)."""
    names = [k for k in data["roc"][0] if k != "fpr"]
    result = {}
    for name in names:
        confusion = np.zeros((2, 2), dtype=np.int64)
        for row in data["confusion"]:
            if row["family"] == name:
                confusion[row["actual"], row["predicted"]] = row["count"]
        calibration = [np.nan if row[name] is None else row[name] for row in data["calibration"]]
        result[name] = Curves(
            np.array([row[name] for row in data["roc"]], dtype=np.float64),
            np.array([row[name] for row in data["precision_recall"]], dtype=np.float64),
            np.array(calibration, dtype=np.float64),
            confusion,
        )
    return result


def _figure(width: float = 4.8, height: float = 4.0) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Fixed margins: the constrained layout engine draws every figure twice (40% of the render time).
    figure = Figure(figsize=(width, height), dpi=100)
    figure.subplots_adjust(left=0.14, right=0.97, bottom=0.12, top=0.9, wspace=0.35)
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _finish(ax: Any, title: str, xlabel: str, ylabel: str, legend: str) -> None:
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(loc=legend, fontsize=8)


def render(curves: dict[str, Curves], metrics: dict[str, dict[str, float]], rows: int) -> dict[str, bytes]:
    """ROC, precision-recall, calibration and confusion matrices of the given models, overlaid: {"roc.png": ...}."""
    colors = dict(zip(curves, ("C0", "C1", "C2", "C3"), strict=False))
    figures = {}

    figure = _figure()
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="chance")
    for name, c in curves.items():
        ax.plot(GRID, c.tpr, color=colors[name], label=f"{name} (AUC {metrics[name]['roc_auc']:.4f})")
    _finish(ax, f"ROC, {rows} evaluation rows", "False positive rate", "True positive rate", "lower right")
    figures["roc"] = _png(figure)

    figure = _figure()
    ax = figure.add_subplot()
    first = next(iter(curves.values())).confusion  # every model is scored on the same rows
    positives = first[1].sum() / max(first.sum(), 1)
    for name, c in curves.items():
        ax.plot(GRID, c.precision, color=colors[name], label=f"{name} (F1 {metrics[name]['f1']:.4f})")
    ax.axhline(positives, color="grey", lw=0.8, ls="--", label=f"chance ({positives:.2f})")
    _finish(ax, f"Precision-recall, {rows} evaluation rows", "Recall", "Precision (interpolated)", "lower left")
    figures["precision_recall"] = _png(figure)

    figure = _figure()
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label=PERFECT)
    for name, c in curves.items():
        loss = metrics[name]["log_loss"]
        ax.plot(bin_centers(), c.calibration, "o-", color=colors[name], label=f"{name} (log loss {loss:.4f})")
    _finish(ax, "Calibration", "Predicted probability (bin centre)", "Fraction of positives", "upper left")
    figures["calibration"] = _png(figure)

    figure = _figure(2.9 * len(curves) + 0.6, 3.2)
    for k, (name, c) in enumerate(curves.items()):
        ax = figure.add_subplot(1, len(curves), k + 1)
        ax.imshow(c.confusion, cmap="Blues", vmin=0, vmax=max(int(c.confusion.max()), 1))
        for (i, j), count in np.ndenumerate(c.confusion):
            dark = count > c.confusion.max() / 2
            ax.text(j, i, f"{count}", ha="center", va="center", color="white" if dark else "black")
        ax.set(xticks=[0, 1], yticks=[0, 1], xlabel="Predicted label", ylabel="True label")
        ax.set_title(f"{name}\naccuracy {metrics[name]['accuracy']:.4f}", fontsize=9)
    figures["confusion"] = _png(figure)
    return {f"{name}.png": png for name, png in figures.items()}
