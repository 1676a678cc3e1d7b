"""Device resolution and the tutorial's training loop (pure: arrays and params in, model and history out)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.model import BinaryClassifier
from pipeline.params import TrainParams

LOG_LINE = "Epoch {:4d}/{} Cost: {:.6f} Accuracy {:2.2f}%"
MAX_KEPT_ELEMENTS = 1 << 24  # hypotheses kept between log lines: at most 64 MiB of float32
HistoryCallback = Callable[[int, np.ndarray, np.ndarray], None]


class DeviceError(ValueError):
    """The requested device is not available on this machine."""


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """Auto picks cuda, then mps, then cpu; an explicit device that is absent is an error."""
    mps = getattr(torch.backends, "mps", None)
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": bool(mps and mps.is_available()),
        "cpu": True,
    }
    if name == "auto":
        return torch.device(next(d for d in ("cuda", "mps", "cpu") if available[d]))
    if name not in available:
        raise DeviceError(f"{key}: unknown device {name!r} (auto, cpu, cuda, mps)")
    if not available[name]:
        raise DeviceError(f"{key}: {name!r} was requested but is not available on this machine")
    return torch.device(name)


def sgd_step(weights: list[torch.Tensor], lr: float) -> None:
    """torch.optim.SGD(lr).step() with its defaults (no momentum, no weight decay): w -= lr * grad.

    Bit-identical to torch.optim.SGD (a test checks), but torch.optim's first use imports
    torch._dynamo (about 1.1 s per process) and each step() costs about 40 us of wrappers
    against a 110 us epoch on the tutorial data.
    """
    torch._foreach_add_(weights, [w.grad for w in weights], alpha=-lr)


@dataclass(frozen=True)
class TrainResult:
    """The trained model (on CPU) and per-epoch cost and accuracy (before that epoch's update)."""

    model: BinaryClassifier
    cost: np.ndarray
    accuracy: np.ndarray
    device: str


def train(
    X: np.ndarray,
    y: np.ndarray,
    params: TrainParams,
    device: torch.device,
    log: Callable[[str], None] = print,
    on_history: HistoryCallback | None = None,
) -> TrainResult:
    """Full-batch SGD on binary cross entropy for epochs+1 steps, exactly as the tutorial.

    At each log line the epochs since the previous one go to on_history(first_epoch, cost, accuracy),
    so a tracker can persist them while training goes on.
    """
    torch.manual_seed(params.seed)  # before the model: the seed fixes nn.Linear's initial weights
    model = BinaryClassifier(X.shape[1]).to(device)
    x_train = torch.as_tensor(X, dtype=torch.float32, device=device)
    y_train = torch.as_tensor(y, dtype=torch.float32, device=device).reshape(-1, 1)
    weights = list(model.parameters())
    n = y_train.shape[0]

    def correct(hypothesis: torch.Tensor) -> torch.Tensor:
        return ((hypothesis >= params.threshold) == y_train).sum(dim=(-2, -1))

    # History stays on the device between log lines, the only host syncs. On small data the
    # hypotheses themselves are kept and scored per chunk: cheaper than a reduction per epoch.
    keep_hypotheses = (params.log_every + 1) * n <= MAX_KEPT_ELEMENTS
    costs: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []
    cost_parts: list[np.ndarray] = []
    accuracy_parts: list[np.ndarray] = []
    first = 0
    for epoch in range(params.epochs + 1):
        hypothesis = model(x_train)
        cost = F.binary_cross_entropy(hypothesis, y_train)
        for w in weights:  # optimizer.zero_grad()
            w.grad = None
        cost.backward()
        with torch.no_grad():
            sgd_step(weights, params.lr)
        # Accuracy of this epoch's hypothesis, i.e. before the update, as the tutorial reports it.
        costs.append(cost.detach())
        outputs.append(hypothesis.detach() if keep_hypotheses else correct(hypothesis.detach()))
        if epoch % params.log_every == 0 or epoch == params.epochs:
            stacked = torch.stack(outputs)
            hits = correct(stacked) if keep_hypotheses else stacked
            chunk_cost = torch.stack(costs).cpu().numpy().astype(np.float64)
            chunk_accuracy = hits.cpu().numpy().astype(np.float64) / n
            log(LOG_LINE.format(epoch, params.epochs, chunk_cost[-1], chunk_accuracy[-1] * 100))
            if on_history is not None:
                on_history(first, chunk_cost, chunk_accuracy)
            cost_parts.append(chunk_cost)
            accuracy_parts.append(chunk_accuracy)
            costs, outputs, first = [], [], epoch + 1
    return TrainResult(model.cpu(), np.concatenate(cost_parts), np.concatenate(accuracy_parts), str(device))
