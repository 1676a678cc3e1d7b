"""`torchrun` with 2 CPU processes (gloo) against one process: same model, one set of outputs, one run."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
from mlflow import MlflowClient

from pipeline.model import load_checkpoint

from .conftest import REPO, run_env, sh

PREPARE = [
    *("--set", "prepare.source=breast_cancer", "--set", "prepare.standardize=true"),
    *("--set", "prepare.test_size=0.2"),
]


def outputs(tag: str) -> list[str]:
    return [
        "--model", f"out/{tag}/model.pt", "--history", f"out/{tag}/history.csv", "--run-info", f"out/{tag}/run.json",
    ]  # fmt: skip


# First-order full-batch training follows the same path within float rounding: 1e-5. L-BFGS's line
# search amplifies rounding along the way, so it is compared converged, at the optimum's float32 precision.
OPTIMIZERS = {
    "sgd": (["train.optimizer=sgd", "train.lr=0.5", "train.epochs=60"], 1e-5),
    "adam": (["train.optimizer=adam", "train.lr=0.02", "train.epochs=60"], 1e-5),
    "lbfgs": (["train.optimizer=lbfgs", "train.epochs=500"], 1e-3),
}


@pytest.mark.parametrize(("optimizer", "atol"), OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_two_processes_match_one(tmp_path, store_uri, optimizer, atol):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    env = run_env(MLFLOW_TRACKING_URI=store_uri)
    sh([sys.executable, "-m", "pipeline", "prepare", *PREPARE], tmp_path, env)
    train = ["train", "--set", "train.C=1", "--set", "train.log_every=20"]
    train += [a for o in optimizer for a in ("--set", o)]
    sh([sys.executable, "-m", "pipeline", *train, *outputs("one")], tmp_path, env)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pipeline"]
    proc = sh([*torchrun, *train, *outputs("two")], tmp_path, env)

    (one, _), (two, _) = load_checkpoint(tmp_path / "out/one/model.pt"), load_checkpoint(tmp_path / "out/two/model.pt")
    np.testing.assert_allclose(two.linear.weight.detach(), one.linear.weight.detach(), rtol=0, atol=atol)
    np.testing.assert_allclose(two.linear.bias.detach(), one.linear.bias.detach(), rtol=0, atol=atol)
    history = [np.loadtxt(tmp_path / f"out/{t}/history.csv", delimiter=",", skiprows=1) for t in ("one", "two")]
    if atol == 1e-5:
        np.testing.assert_allclose(history[1], history[0], rtol=1e-5, atol=1e-6)  # global cost and accuracy
    assert proc.stdout.count("Epoch    0/") == 1  # only rank 0 prints and records
    runs = MlflowClient(store_uri).search_runs(
        [MlflowClient(store_uri).get_experiment_by_name("binary-classifier").experiment_id]
    )
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}  # two parents, two model runs
