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
MAX_KEPT_ELEMENTS = 1 << 24  # hypotheses kept for end-of-training scoring: at most 64 MiB of float32


class DeviceError(ValueError):
    """The requested device is not available on this machine."""


def resolve_device(name: str) -> torch.device:
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
        raise DeviceError(f"train.device: unknown device {name!r} (auto, cpu, cuda, mps)")
    if not available[name]:
        raise DeviceError(f"train.device: {name!r} was requested but is not available on this machine")
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
) -> TrainResult:
    """Full-batch SGD on binary cross entropy for epochs+1 steps, exactly as the tutorial."""
    torch.manual_seed(params.seed)  # before the model: the seed fixes nn.Linear's initial weights
    model = BinaryClassifier(X.shape[1]).to(device)
    x_train = torch.as_tensor(X, dtype=torch.float32, device=device)
    y_train = torch.as_tensor(y, dtype=torch.float32, device=device).reshape(-1, 1)
    weights = list(model.parameters())
    n = y_train.shape[0]

    def correct(hypothesis: torch.Tensor) -> torch.Tensor:
        return ((hypothesis >= params.threshold) == y_train).sum()

    # History stays on the device, no host sync per epoch (only at log lines). On small data the
    # hypotheses themselves are kept and scored once at the end: cheaper than a reduction per epoch.
    keep_hypotheses = (params.epochs + 1) * n <= MAX_KEPT_ELEMENTS
    costs: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []
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
            hits = correct(outputs[-1]) if keep_hypotheses else outputs[-1]
            log(LOG_LINE.format(epoch, params.epochs, cost.item(), hits.item() / n * 100))
    with torch.no_grad():
        stacked = torch.stack(outputs)
        hits = ((stacked >= params.threshold) == y_train).sum((1, 2)) if keep_hypotheses else stacked
    return TrainResult(
        model=model.cpu(),
        cost=torch.stack(costs).cpu().numpy().astype(np.float64),
        accuracy=hits.cpu().numpy().astype(np.float64) / n,
        device=str(device),
    )
