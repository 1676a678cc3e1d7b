"""L-BFGS's objective in one pass over X: binary cross entropy, its gradient and the hits; the columns' moments."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.devices import Shard
from pipeline.model import BinaryClassifier, folded_weights

FUSED_ROWS = 1 << 13  # rows per block of the fused pass: at 100 features 3.2 MB, still in cache for its second read
# On a GPU each block costs several kernel launches while re-reading a block from HBM is nearly free: blocks of
# 2^26 elements (256 MB), each read twice; blocks of FUSED_ROWS would make a pass mostly launches.
GPU_BLOCK_ELEMENTS = 1 << 26


def fused_pass(
    X: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed binary cross entropy of logits X @ weight + bias, its gradient and the hits, in one pass over X.

    Block by block: the logits (one read of the block from memory), then the gradient X_b^T (p - y) while the
    block is still in cache; unfused, autograd reads all of X twice (forward, then backward). On a GPU the
    blocks are large (GPU_BLOCK_ELEMENTS) and read twice from HBM. Only what needs the block runs per block;
    the loss and the hits come from the whole logit vector after. Losses are summed
    in float64 (the line search compares values ~1e-9 apart), gradients accumulated in float64.
    Returns (loss sum, d/dweight, d/dbias, hits at the threshold).
    """
    wide = torch.float32 if X.device.type == "mps" else torch.float64
    w, b = weight.detach().reshape(-1), bias.detach().reshape(())
    if X.device.type == "cpu":
        loss, grad_w, grad_b, hits = _cpu_blocks(X.numpy(), y.numpy(), w.numpy(), float(b), threshold)
        as_wide = torch.tensor(loss, dtype=wide), torch.from_numpy(grad_w), torch.tensor(grad_b, dtype=wide)
        return *as_wide, torch.tensor(hits)
    logits, residual = torch.empty_like(y), torch.empty_like(y)
    grad_w = torch.zeros(X.shape[1], dtype=wide, device=X.device)
    step = max(1, GPU_BLOCK_ELEMENTS // X.shape[1])
    for start in range(0, X.shape[0], step):
        block, rows = X[start : start + step], slice(start, start + step)
        logits[rows] = torch.mv(block, w).add_(b)
        residual[rows] = torch.sigmoid(logits[rows]).sub_(y[rows])
        grad_w += torch.mv(block.T, residual[rows])
    loss = F.binary_cross_entropy_with_logits(logits.to(wide), y.to(wide), reduction="sum")
    hits = ((torch.sigmoid(logits) >= threshold) == y).sum()
    return loss, grad_w, residual.sum(dtype=wide), hits


def _cpu_blocks(
    X: np.ndarray, y: np.ndarray, w: np.ndarray, b: float, threshold: float
) -> tuple[float, np.ndarray, float, int]:
    """fused_pass on the CPU: loss sum, X^T (p - y), sum(p - y) and hits, each block's share taken while in cache.

    numpy here, not torch: numpy's BLAS ran these block matrix-vector products near memcpy speed, torch's well
    below it (benchmarks/scale.py prints the ratio). Nothing of X's length is allocated:
    the loss and hits taken over whole logit vectors after the loop cost as much as the loop itself (fresh pages,
    float64 copies); on block-sized scratch vectors that every block reuses they cost about a tenth of it.
    """
    size = min(FUSED_ROWS, len(X))
    z, r, s = (np.empty(size, np.float32) for _ in range(3))
    hit = np.empty(size, bool)
    grad_w = np.zeros(X.shape[1])
    loss = grad_b = 0.0
    misses = 0
    with np.errstate(over="ignore"):  # exp(-z) = inf for a very negative logit: p is then 0, as it should be
        for start in range(0, len(X), FUSED_ROWS):
            block, yb = X[start : start + FUSED_ROWS], y[start : start + FUSED_ROWS]
            k = len(yb)
            zb, rb, sb, hb = z[:k], r[:k], s[:k], hit[:k]
            np.matmul(block, w, out=zb)
            zb += b
            # Cross entropy from logits, stable at any z: log1p(exp(-|z|)) + max(z, 0) - y z. Each row's term is
            # rounded to float32 as z already is; the sum is float64, as the line search compares values ~1e-9 apart.
            np.exp(np.negative(np.abs(zb, out=sb), out=sb), out=sb)
            np.log1p(sb, out=sb)
            sb += np.maximum(zb, 0, out=rb)
            sb -= np.multiply(yb, zb, out=rb)
            loss += sb.sum(dtype=np.float64)
            np.exp(np.negative(zb, out=rb), out=rb)  # p = 1 / (1 + exp(-z))
            rb += 1
            np.reciprocal(rb, out=rb)
            misses += np.count_nonzero(np.not_equal(np.greater_equal(rb, threshold, out=hb), yb, out=hb))
            rb -= yb
            grad_b += rb.sum(dtype=np.float64)
            grad_w += rb @ block
    return loss, grad_w, grad_b, len(X) - misses


class _FusedBCE(torch.autograd.Function):
    """fused_pass as an autograd op: the gradient is computed in the forward pass and only scaled in backward."""

    @staticmethod
    def forward(
        ctx: Any, X: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, threshold: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss sum and hits; the gradients are kept for backward."""
        loss, grad_w, grad_b, hits = fused_pass(X, y, weight, bias, threshold)
        ctx.save_for_backward(grad_w, grad_b)
        ctx.shapes = (weight.shape, bias.shape, weight.dtype)
        ctx.mark_non_differentiable(hits)
        return loss, hits

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, grad_hits: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """Chain rule: the upstream scalar times the gradients fused_pass found."""
        grad_w, grad_b = ctx.saved_tensors
        w_shape, b_shape, dtype = ctx.shapes
        scaled = [(grad_loss * g).to(dtype).reshape(shape) for g, shape in ((grad_w, w_shape), (grad_b, b_shape))]
        return None, None, *scaled, None


class FusedObjective(nn.Module):
    """Mean binary cross entropy and hits of BinaryClassifier on the rows in one pass (for full-batch L-BFGS).

    A preconditioner's standardisation is folded into the weights (model.folded_weights), never applied
    to a copy of X; DDP can wrap it like any module.
    """

    def __init__(self, model: BinaryClassifier, mean: torch.Tensor, scale: torch.Tensor, threshold: float) -> None:
        super().__init__()
        self.model, self.threshold = model, threshold
        self.register_buffer("mean", mean)
        self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean cost over the rows, hits)."""
        weight, bias = folded_weights(self.model, self.mean, self.scale)
        loss, hits = _FusedBCE.apply(x, y.reshape(-1), weight, bias, self.threshold)
        return loss / x.shape[0], hits


def column_moments(X: torch.Tensor, shard: Shard, rows: int = 1 << 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation per column over every process's rows: one pass, a block at a time.

    Sums of x and x^2 come from matrix-vector products (what BLAS streams fastest), accumulated
    across blocks in float64 (float32 on mps). Any positive scale gives the same optimum, since the
    penalty and the unfolding use the same numbers, so E[x^2] - E[x]^2 is precise enough.
    """
    wide = torch.float32 if X.device.type == "mps" else torch.float64
    if X.device.type == "cpu":
        sums = torch.from_numpy(_cpu_sums(X.numpy()))
    else:
        sums = torch.zeros(2 * X.shape[1] + 1, dtype=wide, device=X.device)
        for start in range(0, X.shape[0], rows):
            block = X[start : start + rows]
            ones = torch.ones(1, block.shape[0], dtype=block.dtype, device=block.device)
            sums[: X.shape[1]] += (ones @ block)[0].to(wide)
            sums[X.shape[1] : -1] += (ones @ block.square())[0].to(wide)
            sums[-1] += block.shape[0]
    shard.all_sum(sums)
    mean = sums[: X.shape[1]] / sums[-1]
    std = (sums[X.shape[1] : -1] / sums[-1] - mean.square()).clamp_min(0).sqrt()
    std[std == 0] = 1.0
    return mean.to(torch.float32), std.to(torch.float32)


def _cpu_sums(X: np.ndarray, rows: int = 1 << 12) -> np.ndarray:
    """column_moments' sums on the CPU, [sum x, sum x^2, rows] in float64: numpy's BLAS, as in _cpu_blocks.

    Small blocks and one reused buffer keep each block's square in cache: torch squaring large blocks into
    fresh memory took several fused passes' time, this takes about one.
    """
    ones, square = np.ones(rows, np.float32), np.empty((min(rows, len(X)), X.shape[1]), np.float32)
    sums = np.zeros(2 * X.shape[1] + 1)
    for start in range(0, len(X), rows):
        block = X[start : start + rows]
        k = len(block)
        sums[: X.shape[1]] += ones[:k] @ block
        sums[X.shape[1] : -1] += ones[:k] @ np.square(block, out=square[:k])
    sums[-1] = len(X)
    return sums


def unfold(model: BinaryClassifier, mean: torch.Tensor, scale: torch.Tensor) -> None:
    """Turn weights learnt on standardised coordinates into weights on the rows as given, in place."""
    with torch.no_grad():
        weight, bias = folded_weights(model, mean, scale)
        model.linear.weight.copy_(weight)
        model.linear.bias.copy_(bias)
