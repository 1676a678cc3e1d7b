"""The tutorial's BinaryClassifier, its config, checkpoints and the one scoring path."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from pipeline.dataset import Prepared


class BinaryClassifier(nn.Module):
    """Logistic regression as in the tutorial: nn.Linear then nn.Sigmoid."""

    def __init__(self, n_features: int = 2) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Probability of class 1, shape (N, 1)."""
        return self.sigmoid(self.linear(x))


@dataclass(frozen=True)
class ModelConfig:
    """What it takes to rebuild and apply the model; travels inside the checkpoint."""

    n_features: int
    features: tuple[str, ...]
    threshold: float
    mean: tuple[float, ...] | None = None  # standardisation fitted on the train split
    scale: tuple[float, ...] | None = None


def checkpoint_bytes(model: BinaryClassifier, config: ModelConfig) -> bytes:
    """Serialise weights (moved to CPU) and config; BytesIO keeps the bytes independent of the file name."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save({"state_dict": state, "config": asdict(config)}, buffer)
    return buffer.getvalue()


def load_checkpoint(path: str | Path) -> tuple[BinaryClassifier, ModelConfig]:
    """Load with weights_only=True: plain tensors and primitives, no pickled code."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        raw = blob["config"]
        config = ModelConfig(
            n_features=int(raw["n_features"]),
            features=tuple(raw["features"]),
            threshold=float(raw["threshold"]),
            mean=None if raw.get("mean") is None else tuple(raw["mean"]),
            scale=None if raw.get("scale") is None else tuple(raw["scale"]),
        )
        model = BinaryClassifier(config.n_features)
        model.load_state_dict(blob["state_dict"])
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path}: checkpoint not found (run the train stage first)") from exc
    except Exception as exc:  # torch.load fails on junk with many types (zip, unpickler, struct)
        raise ValueError(f"{path}: not a BinaryClassifier checkpoint: {exc}") from exc
    model.eval()
    return model, config


def folded_weights(
    model: BinaryClassifier, mean: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(W / scale, b - (W / scale) . mean): weights that act on raw rows as W acts on standardised ones."""
    weight = model.linear.weight / scale
    return weight, model.linear.bias - weight @ mean


def on_prepared(config: ModelConfig, mean: tuple[float, ...] | None, scale: tuple[float, ...] | None) -> ModelConfig:
    """The config that applies the model to rows prepared as (raw - mean) / scale as it applies to raw rows.

    Raw rows are X * scale + mean, so the model's own (raw - m) / s is (X - (m - mean) / scale) / (s / scale);
    no scaling at all for the model trained on these arrays (its statistics are theirs).
    """
    if mean is None:
        return config
    if config.mean == mean and config.scale == scale:
        return replace(config, mean=None, scale=None)
    m = np.zeros(len(mean)) if config.mean is None else np.asarray(config.mean)
    s = np.ones(len(mean)) if config.scale is None else np.asarray(config.scale)
    mean_a, scale_a = np.asarray(mean), np.asarray(scale)
    return replace(config, mean=tuple(((m - mean_a) / scale_a).tolist()), scale=tuple((s / scale_a).tolist()))


def score_prepared(model: BinaryClassifier, config: ModelConfig, prepared: Prepared) -> np.ndarray:
    """A model's probabilities on the prepared evaluation rows, as it would give them on the raw rows."""
    return predict_proba(model, on_prepared(config, prepared.mean, prepared.scale), prepared.X_test)


ROW_BLOCK = 1 << 13  # rows scored at a time: their float64 feature-major copy (6.5 MB at 100 features) stays in cache


def _raw_weights(model: BinaryClassifier, config: ModelConfig) -> tuple[np.ndarray, float]:
    """The weights and bias in float64 that act on the rows as the config takes them (the scaling folded in).

    X @ (W / scale) + (b - (W / scale) . mean) is the model on (X - mean) / scale.
    """
    weight = model.linear.weight.detach().double().reshape(-1).cpu().numpy()
    bias = float(model.linear.bias.detach().double().item())
    if config.scale is not None:
        weight = weight / np.asarray(config.scale, dtype=np.float64)
        bias -= float(np.dot(weight, np.asarray(config.mean, dtype=np.float64)))
    return weight, bias


def _sum_in_order(columns: Any, weight: Any, total: Any) -> None:
    """Add x_j * w_j to total for each feature j in turn, rows side by side (numpy arrays or torch tensors alike).

    columns: the rows' features, feature-major in float64 (overwritten). Each product and each sum is one IEEE
    float64 operation, which vector and scalar code paths (and GPUs) round alike.
    """
    columns *= weight[:, None]
    for products in columns:
        total += products


def row_logits(model: BinaryClassifier, config: ModelConfig, X: np.ndarray) -> np.ndarray:
    """Each row's logit in float64, the same bits whatever batch, position, device or thread count it comes in.

    A float32 matmul picks its kernel by the batch's shape (one CPU gave a row 9e-8 apart in batches of 7
    and 25), and a float64 one sums in an order of its own; here each row's sum runs feature by feature from
    the bias. On the CPU with numpy (no threads: torch's OpenMP threads competed with the reader's); on
    another device with torch, in the same order.
    """
    weight, bias = _raw_weights(model, config)
    device = model.linear.weight.device  # CPU unless the loader was asked for another device
    if device.type == "cpu":
        return linear_logits(weight, bias, X)
    return _device_logits(device, X, weight, bias)


def linear_logits(weight: np.ndarray, bias: float, X: np.ndarray) -> np.ndarray:
    """X @ weight + bias in float64, each row summed feature by feature from the bias on the CPU (row_logits' way).

    Any linear model's logits, the same bits whatever batch the rows come in: scikit-learn's baseline's too,
    whose own predict_proba (a BLAS product) gave a row other bits in another batch, so Ray's part-by-part
    scoring could not match the local engine's.
    """
    return _cpu_logits(X.shape[0], lambda block, lo, hi: np.copyto(block, X[lo:hi].T), weight, bias)


def column_logits(model: BinaryClassifier, config: ModelConfig, columns: list[np.ndarray]) -> np.ndarray:
    """row_logits of rows given feature by feature (one float32 array per feature): the same bits.

    For a columnar file, where making row-major rows first (only to read them back feature-major) cost several
    times the scoring itself (benchmarks/serving.py measures batch scoring).
    """
    weight, bias = _raw_weights(model, config)
    device = model.linear.weight.device
    if device.type != "cpu":
        return _device_logits(device, np.stack(columns, axis=1), weight, bias)

    def fill(block: np.ndarray, lo: int, hi: int) -> None:
        for row, column in zip(block, columns, strict=True):
            row[:] = column[lo:hi]

    return _cpu_logits(columns[0].shape[0], fill, weight, bias)


def _cpu_logits(n: int, fill: Callable[[np.ndarray, int, int], None], weight: np.ndarray, bias: float) -> np.ndarray:
    """The logits of n rows, ROW_BLOCK at a time; fill(block, lo, hi) puts rows lo..hi feature-major in block."""
    logits = np.empty(n)
    buffer = np.empty((weight.size, min(n, ROW_BLOCK)))  # float64, reused block after block
    for lo in range(0, n, ROW_BLOCK):
        hi = min(n, lo + ROW_BLOCK)
        block, total = buffer[:, : hi - lo], logits[lo:hi]
        fill(block, lo, hi)
        total[:] = bias
        _sum_in_order(block, weight, total)
    return logits


def _device_logits(device: torch.device, X: np.ndarray, weight: np.ndarray, bias: float) -> np.ndarray:
    """The CPU's sums, block by block in torch on `device`."""
    logits = np.empty(X.shape[0])
    with torch.no_grad():
        on_device, w = torch.from_numpy(X).to(device), torch.from_numpy(weight).to(device)
        for start in range(0, X.shape[0], ROW_BLOCK):
            block = on_device[start : start + ROW_BLOCK]
            total = torch.full((block.shape[0],), bias, dtype=torch.float64, device=device)
            _sum_in_order(block.T.double().contiguous(), w, total)
            logits[start : start + block.shape[0]] = total.cpu().numpy()
    return logits


def predict_proba(model: BinaryClassifier, config: ModelConfig, X_raw: np.ndarray) -> np.ndarray:
    """Probabilities for rows as the config takes them: the path evaluate, register, serving and batch scoring share.

    The logit comes from row_logits (column_logits for batch scoring's columns); the sigmoid from numpy, whose
    float64 exp treats every element alike (torch's vectorised sigmoid computes a loop's tail elements with
    scalar code, so a row's last bit could depend on where it sits in the batch and on the thread count).
    """
    return sigmoid(row_logits(model, config, np.ascontiguousarray(X_raw, dtype=np.float32)))


def predict_proba_columns(model: BinaryClassifier, config: ModelConfig, columns: list[np.ndarray]) -> np.ndarray:
    """predict_proba of rows given as one array per feature, in the config's order."""
    return sigmoid(column_logits(model, config, [np.asarray(c, dtype=np.float32) for c in columns]))


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)) in numpy's float64, every element alike."""
    return 1.0 / (1.0 + np.exp(-logits))
