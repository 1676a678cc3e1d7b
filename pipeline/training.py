"""Device resolution and the tutorial's training loop (pure: arrays and params in, model and history out)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.model import BinaryClassifier, folded_weights
from pipeline.params import TrainParams

LOG_LINE = "Epoch {:4d}/{} Cost: {:.6f} Accuracy {:2.2f}%"
MAX_KEPT_ELEMENTS = 1 << 24  # hypotheses kept between log lines: at most 64 MiB of float32
HistoryCallback = Callable[[int, np.ndarray, np.ndarray], None]
# A cost this many times above where training started (or above a no-information model's ln 2, if that
# is more) is far off. Binary cross entropy clamps log at -100, so a diverging sgd run saturates (at 50
# for a balanced label) instead of becoming NaN: its behaviour gives it away, not NaN alone. A bold learning
# rate spikes that high in its first epochs and then comes back, so far off is divergence only while the cost
# stays there: DIVERGENCE_PATIENCE log lines in a row, or at the last one.
DIVERGENCE_FACTOR = 10.0
DIVERGENCE_PATIENCE = 3


class DeviceError(ValueError):
    """The requested device is not available on this machine."""


class DivergenceError(ValueError):
    """The cost became NaN or inf, or rose far above where it started."""


@dataclass
class DivergenceWatch:
    """Judges at each log line whether training diverges.

    A cost that is not finite stops it at once; one far above where it started stops it only if it has not
    come back DIVERGENCE_PATIENCE log lines later, or by the last line (never, with `rising` False).
    """

    rising: bool = True
    start: float | None = None
    since: int | None = None  # first epoch of the current stretch far above the start
    peak: float = 0.0
    lines: int = 0  # log lines in a row that ended in that stretch

    def check(self, cost: np.ndarray, first_epoch: int, last: bool) -> None:
        """Raise DivergenceError naming the epoch where it went wrong; `cost` holds epochs from first_epoch on."""
        self.start = float(cost[0]) if self.start is None else self.start
        finite = np.isfinite(cost)
        if not finite.all():
            self._fail(first_epoch + int(np.argmin(finite)), "is not a number")
        if not self.rising:
            return
        high = cost > DIVERGENCE_FACTOR * max(self.start, math.log(2))
        if not high[-1]:  # back (or never gone): a spike on the way is not divergence
            self.since, self.peak, self.lines = None, 0.0, 0
            return
        if self.since is None:
            below = np.flatnonzero(~high)
            self.since = first_epoch + (int(below[-1]) + 1 if below.size else 0)
        self.peak, self.lines = max(self.peak, float(cost[high].max())), self.lines + 1
        if self.lines >= DIVERGENCE_PATIENCE or last:
            end = first_epoch + cost.shape[0] - 1
            how = f"rose to {self.peak:.6g} from {self.start:.6g} at epoch 0 and had not come back by epoch {end}"
            self._fail(self.since, how)

    def _fail(self, epoch: int, what: str) -> None:
        raise DivergenceError(
            f"train: diverged at epoch {epoch}: the cost {what}; lower train.lr "
            "(or set prepare.standardize: true); nothing was saved or registered"
        )


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


@dataclass(frozen=True)
class Shard:
    """A process's rows in a data-parallel run; the default is a single process with every row."""

    rank: int = 0
    world: int = 1
    n_total: int | None = None  # rows over all processes


class _History:
    """Per-epoch cost and hits kept on the device; moved to the host only at log lines."""

    def __init__(
        self,
        shard: Shard,
        log: Callable[[str], None],
        on_history: HistoryCallback | None,
        score: Callable[[torch.Tensor], torch.Tensor] = lambda hits: hits,
        rising: bool = True,
    ) -> None:
        self.shard, self.log, self.on_history = shard, log, on_history
        self.watch = DivergenceWatch(rising)  # a cost far above its start is no divergence in line-search trials
        self.score = score  # turns what add() kept into hit counts, at flush time
        self.costs: list[torch.Tensor] = []
        self.kept: list[torch.Tensor] = []
        self.counts: list[int] = []
        self.cost_parts: list[np.ndarray] = []
        self.accuracy_parts: list[np.ndarray] = []
        self.first = 0

    def add(self, cost: torch.Tensor, kept: torch.Tensor, count: int) -> None:
        """One epoch: mean cost over the `count` rows this process scored, and hits (or hypotheses to score)."""
        self.costs.append(cost.detach())
        self.kept.append(kept.detach())
        self.counts.append(count)

    def flush(self, epoch: int, total: int) -> None:
        """Print the log line for `epoch` and hand the epochs since the last line to on_history."""
        cost = torch.stack(self.costs)
        hits = self.score(torch.stack(self.kept)).to(cost.dtype)
        counts = torch.tensor(self.counts, dtype=cost.dtype, device=cost.device)
        if self.shard.world > 1:  # mean cost and hits over every process's rows: one collective per log line
            import torch.distributed as dist

            sums = torch.stack([cost * counts, hits, counts])
            dist.all_reduce(sums)
            counts, hits = sums[2], sums[1]
            cost = sums[0] / counts
        chunk_cost = cost.cpu().numpy().astype(np.float64)
        chunk_accuracy = hits.cpu().numpy().astype(np.float64) / counts.cpu().numpy().astype(np.float64)
        self.watch.check(chunk_cost, self.first, epoch >= total)
        self.log(LOG_LINE.format(epoch, total, chunk_cost[-1], chunk_accuracy[-1] * 100))
        if self.on_history is not None:
            self.on_history(self.first, chunk_cost, chunk_accuracy)
        self.cost_parts.append(chunk_cost)
        self.accuracy_parts.append(chunk_accuracy)
        self.costs, self.kept, self.counts, self.first = [], [], [], epoch + 1

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Every epoch's cost and accuracy."""
        return np.concatenate(self.cost_parts), np.concatenate(self.accuracy_parts)


def _as_tensor(array: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """float32 on the device, placed once; a writable float32 array on the CPU is shared, not copied."""
    if isinstance(array, torch.Tensor):  # already placed (a caller timing its own host-to-device copy)
        return array.to(device=device, dtype=torch.float32)
    return torch.as_tensor(np.asarray(array, dtype=np.float32), device=device)


FUSED_ROWS = 1 << 13  # rows per block of the fused pass: at 100 features 3.2 MB, still in cache for its second read
# On a GPU each block costs ~8 launches (~5-10 us each) while re-reading a block from HBM is nearly free (400 MB
# in 0.13 ms on an H100): blocks of 2^26 elements (256 MB), each read twice. Blocks of 8192 rows made an L-BFGS
# pass at 1M x 100 take ~15 ms of launches.
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

    numpy here, not torch: numpy's BLAS ran these block matrix-vector products at 0.9-1.2x memcpy on the 2-core
    machine, torch's at 0.55-0.7x (benchmarks/scale.py prints the ratio). Nothing of X's length is allocated:
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


def train(
    X: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    params: TrainParams,
    device: torch.device,
    log: Callable[[str], None] = print,
    on_history: HistoryCallback | None = None,
    shard: Shard = Shard(),
    standardized: bool = False,
) -> TrainResult:
    """Train BinaryClassifier on the rows as given with the chosen optimizer; sgd full batch is the tutorial exactly.

    Epoch e's cost and accuracy are those of the model before epoch e's update (for lbfgs: of each
    evaluation, one pass over the data). At each log line the epochs since the previous one go to
    on_history(first_epoch, cost, accuracy), so a tracker can persist them while training goes on.
    `standardized`: the columns have mean 0 and standard deviation 1 over all rows already (prepare's).
    """
    torch.manual_seed(params.seed)  # before the model: the seed fixes nn.Linear's initial weights
    model = BinaryClassifier(X.shape[1]).to(device)
    x_train = _as_tensor(X, device)
    y_train = _as_tensor(y, device).reshape(-1, 1)
    n_local = y_train.shape[0]
    n_total = shard.n_total or n_local
    # L-BFGS (full batch) takes the fused pass: loss and gradient in one read of X. It is as ill-conditioned
    # as the features' scales are apart, so it optimises in standardised coordinates (the columns' moments
    # from one pass; 0 and 1 without that pass where prepare standardised the rows, which saves 0.3-0.6 s at
    # 10M x 100), penalises the weights on the rows as given and unfolds them at the end: the same objective
    # and optimum, in a fraction of the passes.
    fused = params.optimizer == "lbfgs"
    mean_t, scale_t = None, None
    if fused and standardized:
        mean_t, scale_t = torch.zeros(X.shape[1], device=device), torch.ones(X.shape[1], device=device)
    elif fused:
        mean_t, scale_t = column_moments(x_train, shard)
    net: nn.Module = FusedObjective(model, mean_t, scale_t, params.threshold) if fused else model.linear
    if shard.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        # Averages gradients over processes at every backward; mean and scale are constant buffers.
        net = DistributedDataParallel(net, device_ids=ids, forward_sync_buffers=False)
    weights = list(model.parameters())
    # DDP averages over processes: weighting each process's mean by its share makes it the mean over all rows.
    share = n_local * shard.world / n_total
    l2 = 0.0 if params.C is None else 1.0 / (params.C * n_total)  # scikit-learn: C * sum(loss) + ||W||^2 / 2

    def correct(hypothesis: torch.Tensor, target: torch.Tensor = y_train) -> torch.Tensor:
        return ((hypothesis >= params.threshold) == target).sum(dim=(-2, -1))

    def objective(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss to differentiate, mean cost of these rows, hypothesis or hits); sgd keeps the tutorial's form."""
        if fused:
            cost, scored = net(xb, yb)
        else:
            logits = net(xb)
            scored = torch.sigmoid(logits)  # the hypothesis
            if params.optimizer == "sgd":
                cost = F.binary_cross_entropy(scored, yb)
            else:  # from logits: accurate near probabilities 0 and 1
                cost = F.binary_cross_entropy_with_logits(logits, yb)
        loss = cost if share == 1.0 else cost * share
        if l2:
            raw = model.linear.weight / scale_t if fused else model.linear.weight
            loss = loss + 0.5 * l2 * raw.square().sum()
        return loss, cost, scored

    if params.optimizer == "lbfgs":
        # The line search may try a far worse point and step back: only a non-finite cost is divergence there.
        history = _History(shard, log, on_history, rising=False)
        _lbfgs(params, weights, lambda: objective(x_train, y_train), history, shard, n_total, n_local)
        _unfold(model, mean_t, scale_t)
        cost, accuracy = history.arrays()
        return TrainResult(model.cpu(), cost, accuracy, str(device))

    step = _optimizer(params, weights)
    full_batch = params.batch_size is None or (params.batch_size >= n_local and shard.world == 1)
    # On small full-batch data the hypotheses themselves are kept and scored per log chunk:
    # cheaper than a reduction per epoch.
    keep = full_batch and (params.log_every + 1) * n_local <= MAX_KEPT_ELEMENTS
    history = _History(shard, log, on_history, score=correct) if keep else _History(shard, log, on_history)
    batches = None if full_batch else _batches(params, shard, n_local, n_total, device)
    for epoch in range(params.epochs + 1):
        if batches is None:
            loss, cost, hypothesis = objective(x_train, y_train)
            for w in weights:  # optimizer.zero_grad()
                w.grad = None
            loss.backward()
            step()
            # Accuracy of this epoch's hypothesis, i.e. before the update, as the tutorial reports it.
            history.add(cost, hypothesis if keep else correct(hypothesis.detach()), n_local)
        else:
            cost_sum = torch.zeros((), device=device)
            hits = torch.zeros((), dtype=torch.int64, device=device)
            seen = 0
            for idx in batches():
                xb, yb = x_train[idx], y_train[idx]
                loss, cost, hypothesis = objective(xb, yb)
                for w in weights:
                    w.grad = None
                loss.backward()
                step()
                cost_sum += cost.detach() * idx.shape[0]
                hits += correct(hypothesis.detach(), yb)
                seen += idx.shape[0]
            history.add(cost_sum / seen, hits, seen)
        if epoch % params.log_every == 0 or epoch == params.epochs:
            history.flush(epoch, params.epochs)
    cost, accuracy = history.arrays()
    return TrainResult(model.cpu(), cost, accuracy, str(device))


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
    if shard.world > 1:
        import torch.distributed as dist

        dist.all_reduce(sums)
    mean = sums[: X.shape[1]] / sums[-1]
    std = (sums[X.shape[1] : -1] / sums[-1] - mean.square()).clamp_min(0).sqrt()
    std[std == 0] = 1.0
    return mean.to(torch.float32), std.to(torch.float32)


def _cpu_sums(X: np.ndarray, rows: int = 1 << 12) -> np.ndarray:
    """column_moments' sums on the CPU, [sum x, sum x^2, rows] in float64: numpy's BLAS, as in _cpu_blocks.

    Small blocks (1.6 MB at 100 features) and one reused buffer keep each block's square in cache: torch
    squaring 64k-row blocks into fresh memory took 4-6 fused passes' time, this takes about one.
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


def _unfold(model: BinaryClassifier, mean: torch.Tensor, scale: torch.Tensor) -> None:
    """Turn weights learnt on standardised coordinates into weights on the rows as given, in place."""
    with torch.no_grad():
        weight, bias = folded_weights(model, mean, scale)
        model.linear.weight.copy_(weight)
        model.linear.bias.copy_(bias)


def warm_up(params: TrainParams) -> None:
    """Pay torch.optim's one-off first-use cost (it imports torch._dynamo, ~1 s) before training starts.

    The train stage calls this first thing in its child process, so the import overlaps the parent's
    MLflow start-up instead of delaying the first epoch. The tutorial's sgd never needs it.
    """
    if params.optimizer != "sgd":
        torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def _optimizer(params: TrainParams, weights: list[torch.Tensor]) -> Callable[[], None]:
    """The update after backward(): sgd written out (see sgd_step), adam from torch.optim."""
    if params.optimizer == "sgd":

        def step() -> None:
            with torch.no_grad():
                sgd_step(weights, params.lr)

        return step
    adam = torch.optim.Adam(weights, lr=params.lr)
    return adam.step


def _batches(
    params: TrainParams, shard: Shard, n_local: int, n_total: int, device: torch.device
) -> Callable[[], list[torch.Tensor]]:
    """Per epoch, a seeded shuffle cut into batch_size slices; every process takes the same number of steps."""
    size = int(params.batch_size or n_local)
    steps = -(-n_total // (shard.world * size))  # DDP needs the same count on every process
    generator = torch.Generator()  # on the CPU whatever the device: a GPU's randperm draws another order
    generator.manual_seed(params.seed + shard.rank)

    def epoch() -> list[torch.Tensor]:
        order = torch.randperm(n_local, generator=generator).to(device)
        starts = [(k * size) % n_local for k in range(steps)]  # a shorter shard wraps around
        return [order[s : s + size] for s in starts]

    return epoch


def _lbfgs(
    params: TrainParams,
    weights: list[torch.Tensor],
    objective: Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    history: _History,
    shard: Shard,
    n_total: int,
    n_local: int,
) -> None:
    """Full-batch L-BFGS with a strong-Wolfe line search; every evaluation is an epoch of the history."""
    optimizer = torch.optim.LBFGS(
        weights,
        lr=params.lr,
        max_iter=params.epochs,
        max_eval=params.epochs + 1,  # epochs + 1 passes, as the first-order optimizers make
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=10,
        line_search_fn="strong_wolfe",
    )
    evaluations = [0]

    def closure() -> torch.Tensor:
        for w in weights:
            w.grad = None
        loss, cost, hits = objective()  # the fused pass: hits, not hypotheses
        loss.backward()
        history.add(cost, hits, n_local)
        epoch = evaluations[0]
        evaluations[0] += 1
        if epoch % params.log_every == 0:
            history.flush(epoch, params.epochs)
        value = loss.detach()
        if shard.world > 1:  # the line search needs the loss over all rows, as DDP gives the gradient
            import torch.distributed as dist

            data = cost.detach() * (n_local / n_total)
            dist.all_reduce(data)
            value = data + (value - cost.detach() * (n_local * shard.world / n_total))
        return value

    optimizer.step(closure)
    if history.costs:
        history.flush(evaluations[0] - 1, params.epochs)
