"""Several pipelines at once against one store that does not exist yet: real processes, real sqlite."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline.store import registry

from .conftest import REPO, dvc, dvc_command, run_env

PIPELINES = 4


def test_concurrent_pipelines_create_one_store_and_one_version(tmp_path):
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"  # not created yet: the first opener migrates it
    procs = []
    for k in range(PIPELINES):
        work = tmp_path / f"work{k}"
        shutil.copytree(REPO / "data/raw", work / "data/raw")
        for name in ("params.yaml", "dvc.yaml"):
            shutil.copy(REPO / name, work / name)
        env = run_env(MLFLOW_TRACKING_URI=uri)
        args = [sys.executable, "-m", "pipeline", "run"]
        proc = subprocess.Popen(args, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append((work, proc))
    for _, proc in procs:
        out = proc.communicate(timeout=600)[0].decode()
        assert proc.returncode == 0, out

    client = MlflowClient(uri, registry_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("binary-classifier").experiment_id])
    families = sorted(r.data.tags["pipeline.family"] for r in runs)
    assert families == sorted(["execution", "model", "baseline"] * PIPELINES)  # nothing lost
    assert {r.info.status for r in runs} == {"FINISHED"}
    # The same checkpoint four times over: one version, @challenger and @champion moved once each.
    (version,) = client.search_model_versions("name = 'BinaryClassifier'")
    registered = [json.loads((work / "models/registered.json").read_text()) for work, _ in procs]
    assert {r["version"] for r in registered} == {1} and sum(r["new_version"] for r in registered) == 1
    assert str(client.get_model_version_by_alias("BinaryClassifier", "champion").version) == "1"
    records = registry.history(client, uri, "BinaryClassifier")
    assert sum("alias" in r for r in records) == 2 and sum("reused" in r for r in records) == PIPELINES - 1


def settled(project: Path, timeout: float = 600) -> str:
    """`dvc queue status` once no experiment is queued or running any more."""

    deadline = time.monotonic() + timeout
    while re.search(r"\b(Queued|Running)\b", status := dvc(project, "queue", "status").stdout):
        if time.monotonic() > deadline:
            pytest.fail(f"the queue did not finish in {timeout:.0f} s:\n{status}")
        time.sleep(2)
    return status


def stop_workers(project: Path, grace: float = 30) -> None:
    """`dvc queue stop`, then SIGKILL to any of this project's workers still there after `grace` seconds.

    dvc-task's worker monitor sends its worker one shutdown message when it finds the queue empty; seen here
    (and upstream, treeverse/dvc#10398) a worker that never acted on it idles forever, and `dvc exp run
    --run-all` waits on it forever. So the test waits on the experiments, not on the workers.
    """

    dvc(project, "queue", "stop", ok=False)
    deadline = time.monotonic() + grace
    while workers := [p for p in Path("/proc").glob("[0-9]*") if _is_worker(p, project)]:
        if time.monotonic() > deadline:
            for proc in workers:
                os.kill(int(proc.name), signal.SIGKILL)
            return
        time.sleep(0.5)


def _is_worker(proc: Path, project: Path) -> bool:
    try:
        cwd = Path(os.readlink(proc / "cwd"))
        return b"queue-worker" in (proc / "cmdline").read_bytes() and cwd == project.resolve()
    except OSError:  # gone meanwhile, or not ours to read
        return False


def test_dvc_queue_with_two_workers_on_a_new_store(project):
    """`dvc queue start -j 2`: two queued experiments at once, the default store not created yet."""

    (project / "mlflow.db").unlink()
    for lr in ("0.5", "0.25"):
        dvc(project, "exp", "run", "--queue", "-S", f"train.lr={lr}")
    # Not through sh(): the workers inherit `dvc queue start`'s stdout, so a pipe would stay open until they exit
    cmd, env = dvc_command(project, "queue", "start", "-j", "2")
    with (project.parent / "queue-start.log").open("w") as log:
        subprocess.run(cmd, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT, check=True, timeout=120)
    try:
        queue = settled(project)
    finally:
        stop_workers(project)
    # A queued experiment that fails is only marked so in the queue: its log says why
    logs = "".join(dvc(project, "queue", "logs", line.split()[0], ok=False).stdout
                   for line in queue.splitlines()[1:] if "Failed" in line)  # fmt: skip
    assert "Success" in queue and "Failed" not in queue, f"{queue}\n{logs}"

    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "binary-classifier"]
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags["pipeline.family"] for r in runs) == sorted(["execution", "model", "baseline"] * 2)
    assert {r.info.status for r in runs} == {"FINISHED"}
    versions = sorted(int(v.version) for v in client.search_model_versions("name = 'BinaryClassifier'"))
    assert versions == [1, 2]  # two checkpoints, two versions
    # Both tie on roc_auc: the first registered is the champion, the second only @challenger.
    assert str(client.get_model_version_by_alias("BinaryClassifier", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("BinaryClassifier", "challenger").version) == "2"
    records = registry.history(client, uri, "BinaryClassifier")
    assert [r["alias"] for r in records] == ["challenger", "champion", "challenger"]
