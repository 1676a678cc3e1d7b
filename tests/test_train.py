"""The tutorial is the first acceptance test; torch.optim.SGD is the reference for our update."""

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import dataset, devices, preparation
from pipeline.devices import DeviceError, Shard, placed, resolve_device
from pipeline.fused import FUSED_ROWS, GPU_BLOCK_ELEMENTS, column_moments, fused_pass
from pipeline.model import (
    ROW_BLOCK,
    BinaryClassifier,
    ModelConfig,
    checkpoint_bytes,
    load_checkpoint,
    predict_proba,
    predict_proba_columns,
)
from pipeline.params import load_params
from pipeline.sources import open_source
from pipeline.training import sgd_step, train

from .conftest import REPO, prepared

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TUTORIAL_LINES = [
    "Epoch    0/1000 Cost: 0.539713 Accuracy 83.33%",
    "Epoch  100/1000 Cost: 0.134272 Accuracy 100.00%",
    "Epoch  200/1000 Cost: 0.080486 Accuracy 100.00%",
    "Epoch  300/1000 Cost: 0.057820 Accuracy 100.00%",
    "Epoch  400/1000 Cost: 0.045251 Accuracy 100.00%",
    "Epoch  500/1000 Cost: 0.037228 Accuracy 100.00%",
    "Epoch  600/1000 Cost: 0.031649 Accuracy 100.00%",
    "Epoch  700/1000 Cost: 0.027538 Accuracy 100.00%",
    "Epoch  800/1000 Cost: 0.024381 Accuracy 100.00%",
    "Epoch  900/1000 Cost: 0.021877 Accuracy 100.00%",
    "Epoch 1000/1000 Cost: 0.019843 Accuracy 100.00%",
]
# The tutorial's every-10-epochs printout, a few lines of it (accuracy dips: before the update).
# Its epoch 10 reads 0.614853 against our 0.614852: a last-digit rounding of an older torch.
TUTORIAL_EVERY_10 = {
    "Epoch   20/1000 Cost: 0.441875 Accuracy 66.67%",
    "Epoch   60/1000 Cost: 0.220498 Accuracy 100.00%",
    "Epoch  990/1000 Cost: 0.020029 Accuracy 100.00%",
}
TUTORIAL_PROBA = [2.7616e-04, 3.1595e-02, 3.8959e-02, 9.5624e-01, 9.9823e-01, 9.9969e-01]


def table_of(source, where: Path) -> SimpleNamespace:
    """X, y and feature names of a source, read through the prepare stage's path."""
    p = prepared(source, where)
    return SimpleNamespace(X=p.X_train, y=p.y_train, features=p.features)


def tutorial_table(where: Path) -> SimpleNamespace:
    return table_of(open_source(str(REPO / "data/raw/tutorial.csv"), "y", None, 0, 0, 1, None), where)


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory):
    params = load_params(REPO / "params.yaml")
    table = tutorial_table(tmp_path_factory.mktemp("tutorial"))
    lines: list[str] = []
    result = train(table.X, table.y, params.train, torch.device("cpu"), lines.append)
    return params, table, result, lines


def test_prints_the_tutorials_lines(tutorial):
    assert tutorial[3] == TUTORIAL_LINES


def test_every_10_epochs_matches_the_tutorial(tmp_path):
    params = load_params(REPO / "params.yaml", ["train.log_every=10"])
    table = tutorial_table(tmp_path)
    lines: list[str] = []
    train(table.X, table.y, params.train, torch.device("cpu"), lines.append)
    assert len(lines) == 101 and TUTORIAL_EVERY_10 <= set(lines)


def test_final_parameters_and_predictions(tutorial):
    params, table, result, _ = tutorial
    assert [[round(v, 4) for v in result.model.linear.weight[0].tolist()]] == [[3.2534, 1.5181]]
    assert [round(v, 4) for v in result.model.linear.bias.tolist()] == [-14.4839]
    proba = predict_proba(result.model, ModelConfig(2, table.features, 0.5), table.X)
    assert [float(f"{p:.4e}") for p in proba] == TUTORIAL_PROBA


@pytest.mark.parametrize("rows", [1, 7, ROW_BLOCK - 1, ROW_BLOCK + 1, 3 * ROW_BLOCK])
def test_rows_given_as_columns_get_the_same_bits(rows):
    """Batch scoring's columnar path (one array per feature) sums each row as the row-major path does."""
    torch.manual_seed(5)
    mean, scale = tuple(np.linspace(-3, 3, 9)), tuple(np.linspace(0.5, 2.0, 9))
    model, config = BinaryClassifier(9), ModelConfig(9, tuple("abcdefghi"), 0.5, mean=mean, scale=scale)
    X = np.random.default_rng(rows).normal(2, 3, size=(rows, 9)).astype(np.float32)
    columns = [np.ascontiguousarray(X[:, j]) for j in range(9)]
    np.testing.assert_array_equal(predict_proba_columns(model, config, columns), predict_proba(model, config, X))


def test_a_rows_probability_does_not_depend_on_its_batch(tmp_path):
    torch.manual_seed(3)
    mean, scale = tuple(np.linspace(-3, 3, 7)), tuple(np.linspace(0.5, 2.0, 7))
    model, config = BinaryClassifier(7), ModelConfig(7, tuple("abcdefg"), 0.5, mean=mean, scale=scale)
    X = np.random.default_rng(4).normal(2, 3, size=(300, 7)).astype(np.float32)
    full = predict_proba(model, config, X)
    for size in (1, 2, 3, 7, 25, 64, 299):  # every batch size cuts the rows differently
        parts = [predict_proba(model, config, X[s : s + size]) for s in range(0, len(X), size)]
        np.testing.assert_array_equal(np.concatenate(parts), full)
    order = np.random.default_rng(5).permutation(len(X))
    np.testing.assert_array_equal(predict_proba(model, config, X[order]), full[order])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        np.testing.assert_array_equal(predict_proba(model, config, X), full)
    finally:
        torch.set_num_threads(threads)
    w, b = model.linear.weight.detach().double().numpy()[0], model.linear.bias.item()
    reference = 1 / (1 + np.exp(-(((X - np.array(mean)) / np.array(scale)) @ w + b)))  # standardise, then linear
    np.testing.assert_allclose(full, reference, rtol=1e-12)


def test_history_is_every_epoch_before_the_update(tutorial):
    _, _, result, _ = tutorial
    assert result.cost.shape == result.accuracy.shape == (1001,)
    assert f"{result.cost[0]:.6f}" == "0.539713" and f"{result.cost[-1]:.6f}" == "0.019843"
    assert result.accuracy[0] == pytest.approx(5 / 6) and result.accuracy[10] == pytest.approx(4 / 6)


def test_same_params_same_numbers(tutorial):
    params, table, result, _ = tutorial
    again = train(table.X, table.y, params.train, torch.device("cpu"), lambda _: None)
    assert np.array_equal(again.cost, result.cost)
    assert checkpoint_bytes(again.model, ModelConfig(2, ("x1", "x2"), 0.5)) == checkpoint_bytes(
        result.model, ModelConfig(2, ("x1", "x2"), 0.5)
    )


def test_sgd_step_is_bit_identical_to_torch_optim_sgd():
    rng = np.random.default_rng(0)
    X = torch.from_numpy(rng.normal(size=(64, 5)).astype(np.float32))
    y = torch.from_numpy((rng.random((64, 1)) > 0.5).astype(np.float32))
    torch.manual_seed(0)
    ours, ref = BinaryClassifier(5), BinaryClassifier(5)
    ref.load_state_dict(ours.state_dict())
    optimizer = torch.optim.SGD(ref.parameters(), lr=0.3)
    weights = list(ours.parameters())
    for _ in range(200):
        for w in weights:
            w.grad = None
        torch.nn.functional.binary_cross_entropy(ours(X), y).backward()
        with torch.no_grad():
            sgd_step(weights, 0.3)
        optimizer.zero_grad()
        torch.nn.functional.binary_cross_entropy(ref(X), y).backward()
        optimizer.step()
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)


def test_checkpoint_roundtrip_is_pickle_free(tmp_path, tutorial):
    _, table, result, _ = tutorial
    config = ModelConfig(2, table.features, 0.5, mean=(1.0, 2.0), scale=(2.0, 4.0))
    path = tmp_path / "model.pt"
    path.write_bytes(checkpoint_bytes(result.model, config))
    model, back = load_checkpoint(path)  # weights_only=True inside
    assert back == config
    assert np.array_equal(predict_proba(model, back, table.X), predict_proba(result.model, config, table.X))


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"junk")
    with pytest.raises(ValueError, match="model.pt: not a BinaryClassifier checkpoint"):
        load_checkpoint(path)


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in {"cuda", "mps", "cpu"}
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="'cuda' was requested but is not available"):
            resolve_device("cuda")


@CUDA
def test_cuda_training_matches_cpu_closely(tutorial):
    params, table, result, _ = tutorial
    gpu = train(table.X, table.y, params.train, torch.device("cuda"), lambda _: None)
    assert gpu.device.startswith("cuda") and next(gpu.model.parameters()).device.type == "cpu"
    assert np.allclose(gpu.cost, result.cost, atol=1e-5)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_a_device_gets_a_ranks_rows_through_one_host_block(tmp_path, monkeypatch, device):
    """The rows reach the device block by block across the parts, equal to the rows read whole."""
    rng = np.random.default_rng(5)
    frame = pd.DataFrame(rng.normal(size=(3000, 3)).astype(np.float32), columns=["a", "b", "c"])
    frame["y"] = rng.integers(0, 2, 3000)
    (tmp_path / "table").mkdir()
    for i, (lo, hi) in enumerate([(0, 1000), (1000, 1500), (1500, 3000)]):
        frame.iloc[lo:hi].to_parquet(tmp_path / "table" / f"{i}.parquet")
    source = open_source(str(tmp_path / "table"), "y", None, 0, 0, 1, None)
    preparation.prepare_dir(tmp_path / "p", source, 0.2, 1, False, "error")
    rank = replace(dataset.load_prepared(tmp_path / "p"), train_rows=slice(90, 2100))  # from part 0 into part 2
    monkeypatch.setattr(devices, "PLACE_BYTES", 7 * 3 * 4)  # 7-row blocks: each part ends in a short one
    X, y = placed(rank, "X_train", torch.device(device)), placed(rank, "y_train", torch.device(device))
    assert X.device.type == device and X.shape == (2010, 3) and y.shape == (2010,)
    assert torch.equal(X.cpu(), torch.from_numpy(rank.X_train)) and torch.equal(y.cpu(), torch.from_numpy(rank.y_train))


def test_large_data_history_path_gives_the_same_numbers(tutorial, monkeypatch):
    import pipeline.training

    params, table, result, _ = tutorial
    monkeypatch.setattr(pipeline.training, "MAX_KEPT_ELEMENTS", 0)  # per-epoch reduction instead of kept outputs
    lines: list[str] = []
    streamed = train(table.X, table.y, params.train, torch.device("cpu"), lines.append)
    assert lines == TUTORIAL_LINES
    assert np.array_equal(streamed.cost, result.cost) and np.array_equal(streamed.accuracy, result.accuracy)


def test_history_chunks_arrive_at_log_lines_and_cover_every_epoch(tutorial):
    params, table, result, _ = tutorial
    chunks: list[tuple[int, np.ndarray, np.ndarray]] = []
    train(table.X, table.y, params.train, torch.device("cpu"), lambda _: None, lambda *chunk: chunks.append(chunk))
    assert [first for first, _, _ in chunks] == [0, 1, 101, 201, 301, 401, 501, 601, 701, 801, 901]
    assert np.array_equal(np.concatenate([c for _, c, _ in chunks]), result.cost)
    assert np.array_equal(np.concatenate([a for _, _, a in chunks]), result.accuracy)


def test_a_model_scores_prepared_rows_as_it_scores_raw_rows():
    from pipeline.model import on_prepared
    from pipeline.preparation import scale_rows

    rng = np.random.default_rng(4)
    X = rng.normal([5.0, -3.0, 100.0], [2.0, 0.5, 30.0], (200, 3)).astype(np.float32)
    model = BinaryClassifier(3)
    own = ModelConfig(3, ("a", "b", "c"), 0.5, mean=(4.0, -2.0, 90.0), scale=(3.0, 0.25, 20.0))
    mean, scale = [5.5, -3.25, 95.0], [2.5, 0.5, 32.0]  # another standardisation of the same rows
    prepared_rows = scale_rows(X, mean, scale)
    for config in (own, ModelConfig(3, ("a", "b", "c"), 0.5)):
        on_raw = predict_proba(model, config, X)
        np.testing.assert_allclose(predict_proba(model, on_prepared(config, mean, scale), prepared_rows), on_raw,
                                   rtol=1e-5)  # fmt: skip
    assert on_prepared(own, own.mean, own.scale).mean is None  # the model's own arrays: no scaling at all
    assert on_prepared(own, None, None) == own  # raw arrays: the model's own scaling


# ---------------------------------------------------------------- optimizers, L2, preconditioning
def standardized_breast_cancer():
    """breast_cancer's rows standardised as prepare writes them (float32), and its labels."""
    from sklearn.datasets import load_breast_cancer

    from pipeline.preparation import scale_rows

    bunch = load_breast_cancer()
    X, y = bunch.data.astype(np.float32), bunch.target.astype(np.float32)
    return scale_rows(X, X.mean(0, dtype=np.float64).tolist(), X.std(0, dtype=np.float64).tolist()), y


def quiet_train(X, y, overrides):
    params = load_params(REPO / "params.yaml", [*overrides, "train.log_every=100000"]).train
    return train(X, y, params, torch.device("cpu"), lambda line: None)


def sklearn_weights(X, y, C):
    from sklearn.linear_model import LogisticRegression

    fitted = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(X.astype(np.float64), y)
    return fitted.coef_.ravel(), fitted.intercept_[0]


def test_lbfgs_with_matched_C_equals_sklearn_within_1e_3():
    X, y = standardized_breast_cancer()  # correlated features: a hard case in float32
    result = quiet_train(X, y, ["train.optimizer=lbfgs", "train.C=0.5", "train.epochs=500"])
    coef, intercept = sklearn_weights(X, y, C=0.5)
    assert np.abs(result.model.linear.weight.detach().numpy().ravel() - coef).max() < 1e-3
    assert abs(result.model.linear.bias.item() - intercept) < 1e-3


@pytest.mark.parametrize(
    ("device", "block"), [("cpu", FUSED_ROWS), pytest.param("cuda", GPU_BLOCK_ELEMENTS // 8, marks=CUDA)]
)
def test_fused_pass_equals_autograd_and_sklearn(device, block):
    from sklearn.metrics import log_loss

    rng = np.random.default_rng(0)
    n = 2 * block + 123  # two whole blocks and a partial one
    X = torch.from_numpy(rng.normal(1.0, 2.0, (n, 8)).astype(np.float32)).to(device)
    y = torch.from_numpy((rng.random(n) < 0.4).astype(np.float32)).to(device)
    w, b = torch.from_numpy(rng.normal(0, 0.3, 8).astype(np.float32)).to(device), torch.tensor(-0.2, device=device)
    loss, grad_w, grad_b, hits = (t.cpu() for t in fused_pass(X, y, w, b, 0.5))
    # Unfused, as autograd does it: the logits over all of X, then the backward pass over X again
    W, B = w.clone().requires_grad_(), b.clone().requires_grad_()
    logits = X @ W + B
    reference = torch.nn.functional.binary_cross_entropy_with_logits(logits.double(), y.double(), reduction="sum")
    reference.backward()
    assert abs(loss.item() - reference.item()) < 1e-6 * n
    np.testing.assert_allclose(grad_w.numpy(), W.grad.cpu().numpy(), rtol=1e-4, atol=6e-8 * n)  # sums of n terms
    assert abs(grad_b.item() - B.grad.item()) < 6e-8 * n
    assert hits.item() == int(((torch.sigmoid(logits) >= 0.5) == y).sum())
    X, y, w = X.cpu(), y.cpu(), w.cpu()
    proba = 1 / (1 + np.exp(-(X.numpy().astype(np.float64) @ w.numpy() + b.item())))
    assert abs(loss.item() / n - log_loss(y.numpy(), proba)) < 1e-6


def test_fused_pass_is_finite_and_exact_at_logits_beyond_float32_exp():
    # |z| up to ~300: exp(-z) overflows float32 for z < -88, and 1 + exp(-z) rounds to 1 for z > 17
    rng = np.random.default_rng(1)
    X = torch.from_numpy(rng.normal(0.0, 100.0, (FUSED_ROWS + 7, 3)).astype(np.float32))
    y = torch.from_numpy((rng.random(len(X)) < 0.5).astype(np.float32))
    w, b = torch.tensor([1.0, -0.5, 0.25]), torch.tensor(3.0)
    loss, grad_w, grad_b, hits = fused_pass(X, y, w, b, 0.3)
    logits = (X.double() @ w.double() + b.double()).requires_grad_()
    reference = torch.nn.functional.binary_cross_entropy_with_logits(logits, y.double(), reduction="sum")
    reference.backward()
    assert np.isfinite(loss.item()) and abs(loss.item() - reference.item()) < 1e-5 * reference.item()
    assert abs(grad_b.item() - logits.grad.sum().item()) < 1e-3
    np.testing.assert_allclose(grad_w.numpy(), (X.double().T @ logits.grad).numpy(), rtol=1e-4, atol=1e-2)
    assert hits.item() == int(((torch.sigmoid(logits.detach()) >= 0.3) == y).sum())


def test_column_moments_over_many_blocks_equal_numpys_in_float64():
    rng = np.random.default_rng(2)
    # E[x^2] - E[x]^2 from float32 block sums: offsets within ten scales, as any positive scale serves
    X = rng.normal(rng.uniform(-20, 20, 6), rng.uniform(2, 10, 6), (3 * 4096 + 5, 6)).astype(np.float32)
    X[:, 2] = 7.0  # a constant column: scale 1, not 0
    mean, scale = column_moments(torch.from_numpy(X), Shard())
    wide = X.astype(np.float64)
    np.testing.assert_allclose(mean.numpy(), wide.mean(axis=0), atol=1e-4)
    expected = wide.std(axis=0)
    expected[2] = 1.0
    np.testing.assert_allclose(scale.numpy(), expected, rtol=1e-3)


def test_lbfgs_fused_equals_an_unfused_lbfgs_and_sklearn_within_1e_3():
    X, y = standardized_breast_cancer()
    fused = quiet_train(X, y, ["train.optimizer=lbfgs", "train.C=0.5", "train.epochs=500"])
    # The reference: torch's L-BFGS on an autograd objective, as a user would write it
    Xs = torch.from_numpy(X)
    torch.manual_seed(1)
    linear = torch.nn.Linear(X.shape[1], 1)
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12,
                                  history_size=10, line_search_fn="strong_wolfe")  # fmt: skip
    target = torch.from_numpy(y).reshape(-1, 1).double()

    def closure():
        optimizer.zero_grad()
        cost = torch.nn.functional.binary_cross_entropy_with_logits(linear(Xs).double(), target)
        loss = cost + 0.5 / (0.5 * len(y)) * linear.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    coef, intercept = sklearn_weights(X, y, C=0.5)
    unfused = linear.weight.detach().numpy().ravel()  # all three on standardised features
    fused_w = fused.model.linear.weight.detach().numpy().ravel()
    assert np.abs(fused_w - unfused).max() < 1e-3 and np.abs(unfused - coef).max() < 1e-3
    assert np.abs(fused_w - coef).max() < 1e-3
    bias = fused.model.linear.bias.item(), linear.bias.item(), intercept
    assert abs(bias[0] - bias[1]) < 1e-3 and abs(bias[1] - bias[2]) < 1e-3


def test_lbfgs_on_rows_prepare_standardised_skips_the_moments_pass_for_the_same_optimum(monkeypatch):
    X, y = standardized_breast_cancer()
    overrides = ["train.optimizer=lbfgs", "train.C=0.5", "train.epochs=500", "train.log_every=100000"]
    params = load_params(REPO / "params.yaml", overrides).train
    measured = train(X, y, params, torch.device("cpu"), lambda line: None)
    monkeypatch.setattr("pipeline.fused.column_moments", lambda *args: pytest.fail("a pass for known moments"))
    assumed = train(X, y, params, torch.device("cpu"), lambda line: None, standardized=True)
    for ours, theirs in zip(assumed.model.parameters(), measured.model.parameters(), strict=True):
        np.testing.assert_allclose(ours.detach().numpy(), theirs.detach().numpy(), atol=1e-4)


@pytest.mark.parametrize(
    "overrides",
    [
        ["train.optimizer=adam", "train.lr=0.05", "train.epochs=40"],
        ["train.optimizer=sgd", "train.lr=0.1", "train.epochs=20", "train.batch_size=64"],
        ["train.optimizer=adam", "train.lr=0.01", "train.epochs=10", "train.batch_size=100", "train.C=1"],
    ],
)
def test_optimizers_learn_and_repeat_exactly(overrides):
    X, y = standardized_breast_cancer()
    first = quiet_train(X, y, overrides)
    again = quiet_train(X, y, overrides)
    epochs = int(next(o for o in overrides if o.startswith("train.epochs")).split("=")[1])
    assert first.cost.shape == first.accuracy.shape == (epochs + 1,)
    assert first.cost[-1] < first.cost[0] / 3 and first.accuracy[-1] > 0.95
    np.testing.assert_array_equal(first.cost, again.cost)
    np.testing.assert_array_equal(first.model.linear.weight.detach(), again.model.linear.weight.detach())


def test_lbfgs_on_raw_features_is_preconditioned_and_still_matches_sklearn(tmp_path):
    from sklearn.linear_model import LogisticRegression

    offsets = open_source("synthetic", "y", None, 5000, 8, seed=3, positive=None)  # offsets and scales apart
    table = table_of(offsets, tmp_path / "p")
    result = quiet_train(table.X, table.y, ["train.optimizer=lbfgs", "train.C=1", "train.epochs=200"])
    fitted = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(table.X.astype(np.float64), table.y)
    assert np.abs(result.model.linear.weight.detach().numpy().ravel() - fitted.coef_.ravel()).max() < 1e-3
    assert abs(result.model.linear.bias.item() - fitted.intercept_[0]) < 1e-3
    assert len(result.cost) < 60  # standardised coordinates: a few dozen passes, not hundreds


@CUDA
@pytest.mark.parametrize(
    "overrides",
    [
        ["train.optimizer=lbfgs", "train.C=1", "train.epochs=200"],
        # lr 0.05: at lr 1 Adam's mini-batch path is chaotic (X one ulp apart moves the final cost by 0.02)
        ["train.optimizer=adam", "train.batch_size=64", "train.lr=0.05"],
    ],
)
def test_cuda_optimizers_match_cpu(overrides):
    X, y = standardized_breast_cancer()
    params = load_params(REPO / "params.yaml", [*overrides, "train.log_every=100000"]).train
    cpu = train(X, y, params, torch.device("cpu"), lambda line: None)
    gpu = train(X, y, params, torch.device("cuda"), lambda line: None)
    assert next(gpu.model.parameters()).device.type == "cpu"  # logged from CPU tensors: loads anywhere
    assert abs(gpu.cost[-1] - cpu.cost[-1]) < 1e-3


def test_divergence_is_named_by_epoch_and_a_spike_that_comes_back_is_not_divergence():
    from pipeline.training import DIVERGENCE_PATIENCE, DivergenceError, DivergenceWatch

    spike = DivergenceWatch()
    spike.check(np.array([0.54, 35.1, 20.0, 0.3]), 0, last=False)  # a bold lr: far off, then back
    spike.check(np.array([0.01, 0.008]), 4, last=True)
    with pytest.raises(DivergenceError, match="diverged at epoch 12: the cost is not a number"):
        DivergenceWatch().check(np.array([0.4, np.nan, np.inf]), 11, last=False)
    stuck = DivergenceWatch()
    stuck.check(np.array([0.54, 50.0]), 0, last=False)  # far off at a log line: one more chance ...
    for line in range(1, DIVERGENCE_PATIENCE - 1):
        stuck.check(np.array([50.0, 50.0]), 2 * line, last=False)
    with pytest.raises(DivergenceError, match="epoch 1: the cost rose to 50 from 0.54 .* not come back by epoch"):
        stuck.check(np.array([50.0, 50.0]), 2 * DIVERGENCE_PATIENCE - 2, last=False)  # ... until the patience ends
    with pytest.raises(DivergenceError, match="diverged at epoch 2: the cost rose to 50"):
        DivergenceWatch().check(np.array([0.54, 0.5, 50.0]), 0, last=True)  # at the end, nothing comes back
    DivergenceWatch(rising=False).check(np.array([0.5, 50.0]), 2, last=True)  # L-BFGS line-search trials
