"""The tutorial's training loop and its optimizers (pure: arrays and params in, model and history out)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import fused
from pipeline.devices import Shard
from pipeline.model import BinaryClassifier
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


def sgd_step(weights: list[torch.Tensor], lr: float) -> None:
    """torch.optim.SGD(lr).step() with its defaults (no momentum, no weight decay): w -= lr * grad.

    Bit-identical to torch.optim.SGD (a test checks), but torch.optim's first use imports
    torch._dynamo (a second or so per process) and each step() costs wrappers worth a good part of
    an epoch on the tutorial data.
    """
    torch._foreach_add_(weights, [w.grad for w in weights], alpha=-lr)


@dataclass(frozen=True)
class TrainResult:
    """The trained model (on CPU) and per-epoch cost and accuracy (before that epoch's update)."""

    model: BinaryClassifier
    cost: np.ndarray
    accuracy: np.ndarray
    device: str


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
            sums = self.shard.all_sum(torch.stack([cost * counts, hits, counts]))
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
    if isinstance(array, torch.Tensor):  # placed by the caller (devices.placed, or a benchmark timing its copy)
        return array.to(device=device, dtype=torch.float32)
    return torch.as_tensor(np.asarray(array, dtype=np.float32), device=device)


def train(
    X: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    params: TrainParams,
    device: torch.device,
    log: Callable[[str], None] = print,
    on_history: HistoryCallback | None = None,
    shard: Shard | None = None,
    standardized: bool = False,
) -> TrainResult:
    """Train BinaryClassifier on the rows as given with the chosen optimizer; sgd full batch is the tutorial exactly.

    Epoch e's cost and accuracy are those of the model before epoch e's update (for lbfgs: of each
    evaluation, one pass over the data). At each log line the epochs since the previous one go to
    on_history(first_epoch, cost, accuracy), so a tracker can persist them while training goes on.
    `shard`: this process's part of a data-parallel run (default: one process, every row). `standardized`: the
    columns have mean 0 and standard deviation 1 over all rows already (prepare's).
    """
    shard = shard or Shard()
    torch.manual_seed(params.seed)  # before the model: the seed fixes nn.Linear's initial weights
    model = BinaryClassifier(X.shape[1]).to(device)
    rows = _Rows(_as_tensor(X, device), _as_tensor(y, device).reshape(-1, 1), shard)
    if params.optimizer == "lbfgs":
        history = _lbfgs(model, rows, params, device, _History(shard, log, on_history, rising=False), standardized)
    else:
        history = _first_order(model, rows, params, device, log, on_history)
    cost, accuracy = history.arrays()
    return TrainResult(model.cpu(), cost, accuracy, str(device))


@dataclass(frozen=True)
class _Rows:
    """The process's training rows on the device, and what the mean over every process's rows needs."""

    x: torch.Tensor
    y: torch.Tensor
    shard: Shard

    @property
    def local(self) -> int:
        """Rows held by this process."""
        return self.y.shape[0]

    @property
    def total(self) -> int:
        """Rows over all processes."""
        return self.shard.n_total or self.local

    @property
    def share(self) -> float:
        """DDP averages over processes: weighting each process's mean by its share makes it the mean over all rows."""
        return self.local * self.shard.world / self.total

    def penalised(self, cost: torch.Tensor, raw_weight: torch.Tensor, params: TrainParams) -> torch.Tensor:
        """The loss to differentiate: this process's share of the mean cost, plus the L2 penalty (train.C)."""
        loss = cost if self.share == 1.0 else cost * self.share
        l2 = 0.0 if params.C is None else 1.0 / (params.C * self.total)  # scikit-learn: C * sum(loss) + ||W||^2 / 2
        return loss + 0.5 * l2 * raw_weight.square().sum() if l2 else loss


def _first_order(
    model: BinaryClassifier,
    rows: _Rows,
    params: TrainParams,
    device: torch.device,
    log: Callable[[str], None],
    on_history: HistoryCallback | None,
) -> _History:
    """SGD (the tutorial's loop and loss) or Adam, full batch or in seeded mini-batches; returns the history."""
    net = rows.shard.wrap(model.linear, device)
    weights = list(model.parameters())

    def correct(hypothesis: torch.Tensor, target: torch.Tensor = rows.y) -> torch.Tensor:
        return ((hypothesis >= params.threshold) == target).sum(dim=(-2, -1))

    def objective(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss to differentiate, mean cost of these rows, hypothesis); sgd keeps the tutorial's form."""
        logits = net(xb)
        hypothesis = torch.sigmoid(logits)
        if params.optimizer == "sgd":
            cost = F.binary_cross_entropy(hypothesis, yb)
        else:  # from logits: accurate near probabilities 0 and 1
            cost = F.binary_cross_entropy_with_logits(logits, yb)
        return rows.penalised(cost, model.linear.weight, params), cost, hypothesis

    step = _optimizer(params, weights)
    full_batch = params.batch_size is None or (params.batch_size >= rows.local and rows.shard.world == 1)
    # On small full-batch data the hypotheses themselves are kept and scored per log chunk:
    # cheaper than a reduction per epoch.
    keep = full_batch and (params.log_every + 1) * rows.local <= MAX_KEPT_ELEMENTS
    history = _History(rows.shard, log, on_history, score=correct) if keep else _History(rows.shard, log, on_history)
    batches = None if full_batch else _batches(params, rows.shard, rows.local, rows.total, device)
    for epoch in range(params.epochs + 1):
        if batches is None:
            loss, cost, hypothesis = objective(rows.x, rows.y)
            for w in weights:  # optimizer.zero_grad()
                w.grad = None
            loss.backward()
            step()
            # Accuracy of this epoch's hypothesis, i.e. before the update, as the tutorial reports it.
            history.add(cost, hypothesis if keep else correct(hypothesis.detach()), rows.local)
        else:
            cost_sum = torch.zeros((), device=device)
            hits = torch.zeros((), dtype=torch.int64, device=device)
            seen = 0
            for idx in batches():
                xb, yb = rows.x[idx], rows.y[idx]
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
    return history


def _lbfgs(
    model: BinaryClassifier,
    rows: _Rows,
    params: TrainParams,
    device: torch.device,
    history: _History,
    standardized: bool,
) -> _History:
    """Full-batch L-BFGS with a strong-Wolfe line search; every evaluation is an epoch of the history.

    It takes the fused pass: loss and gradient in one read of X. L-BFGS is as ill-conditioned as the
    features' scales are apart, so it optimises in standardised coordinates (the columns' moments from one
    pass; 0 and 1 without that pass where prepare standardised the rows), penalises the weights on the rows
    as given and unfolds them at the end: the same objective and optimum, in a fraction of the passes.
    """
    width = rows.x.shape[1]
    if standardized:
        mean, scale = torch.zeros(width, device=device), torch.ones(width, device=device)
    else:
        mean, scale = fused.column_moments(rows.x, rows.shard)
    net = rows.shard.wrap(fused.FusedObjective(model, mean, scale, params.threshold), device)
    weights = list(model.parameters())
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
        cost, hits = net(rows.x, rows.y)
        loss = rows.penalised(cost, model.linear.weight / scale, params)
        loss.backward()
        history.add(cost, hits, rows.local)
        epoch = evaluations[0]
        evaluations[0] += 1
        if epoch % params.log_every == 0:
            history.flush(epoch, params.epochs)
        value = loss.detach()
        if rows.shard.world > 1:  # the line search needs the loss over all rows, as DDP gives the gradient
            data = rows.shard.all_sum(cost.detach() * (rows.local / rows.total))
            value = data + (value - cost.detach() * rows.share)
        return value

    optimizer.step(closure)
    if history.costs:
        history.flush(evaluations[0] - 1, params.epochs)
    fused.unfold(model, mean, scale)
    return history


def warm_up(params: TrainParams) -> None:
    """Pay torch.optim's one-off first-use cost (it imports torch._dynamo) before training starts.

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
