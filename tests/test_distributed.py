"""`torchrun` with 2 CPU processes (gloo) against one process: same model, one set of outputs, one run."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from pipeline.model import load_checkpoint

from .conftest import REPO, run_env, sh

PREPARE = [
    *("--set", "prepare.source=breast_cancer", "--set", "prepare.standardize=true"),
    *("--set", "prepare.test_size=0.2"),
]


def torchrun(processes: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", "-m",
            "pipeline"]  # fmt: skip


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
    proc = sh([*torchrun(2), *train, *outputs("two")], tmp_path, env)

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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torchrun_on_cuda_takes_one_process_per_gpu(tmp_path, store_uri):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    env = run_env(MLFLOW_TRACKING_URI=store_uri)
    sh([sys.executable, "-m", "pipeline", "prepare", *PREPARE], tmp_path, env)
    train = ["train", "--set", "train.device=cuda", *("--set", "train.optimizer=lbfgs", "--set", "train.epochs=500")]
    sh([sys.executable, "-m", "pipeline", *train, *outputs("one")], tmp_path, env)
    gpus = torch.cuda.device_count()
    sh([*torchrun(gpus), *train, *outputs("all")], tmp_path, env)  # NCCL from two GPUs on
    (one, _), (all_, _) = (load_checkpoint(tmp_path / f"out/{t}/model.pt") for t in ("one", "all"))
    np.testing.assert_allclose(all_.linear.weight.detach(), one.linear.weight.detach(), rtol=0, atol=1e-3)

    proc = sh([*torchrun(gpus + 1), *train, *outputs("more")], tmp_path, env, ok=False)
    assert proc.returncode != 0 and f"but this machine has {gpus} CUDA device(s)" in proc.stdout + proc.stderr
    assert not (tmp_path / "out/more/model.pt").exists()
