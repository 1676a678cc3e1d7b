"""Real signals at points inside each stage: quick exit, runs KILLED, no temp files, outputs intact, repro recovers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient

from tests.conftest import run_env, sh
from tests.test_e2e import assert_up_to_date, dvc
from tests.test_serving import free_port

OUTPUTS = ("data/prepared/X_train-00000.npy", "models/model.pt", "models/mlflow_run.json", "metrics/evaluate.json")


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the stage ended (exit {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def stage(project: Path, log: Path, *args: str) -> subprocess.Popen:
    env = run_env(DVC_SITE_CACHE_DIR=str(project.parent / "dvc-site"))
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=project, env=env, stdout=out, stderr=out)


def statuses(client: MlflowClient) -> list[str]:
    exp = client.get_experiment_by_name("binary-classifier")
    return [] if exp is None else [r.info.status for r in client.search_runs([exp.experiment_id])]


def leftovers(project: Path) -> list[Path]:
    return [p for p in project.rglob(".*.tmp") if ".dvc" not in p.parts]


def signalled(proc: subprocess.Popen, signum: int) -> tuple[float, int]:
    """Send the signal; how long the process took to exit, and its exit code."""
    sent = time.monotonic()
    proc.send_signal(signum)
    code = proc.wait(timeout=30)
    return time.monotonic() - sent, code


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_at_each_stage(project, tmp_path, signum):
    dvc(project, "repro")
    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    before = {name: (project / name).read_bytes() for name in OUTPUTS}
    runs_before = len(statuses(client))
    log = tmp_path / "stage.log"

    def running_runs() -> bool:
        return statuses(client).count("RUNNING") > 0

    def training() -> bool:  # the execution's parent run and its model run both made, the model training
        return "Epoch    0" in log.read_text() and statuses(client).count("RUNNING") == 2

    # Mid-prepare: a 3M-row synthetic table is being written into a temp folder beside data/prepared.
    big = ("--set", "prepare.source=synthetic", "--set", "prepare.synthetic.n_samples=3000000")
    # Mid-evaluate: the tutorial's six rows are scored in well under a second, between two looks at the store; the
    # tutorial's model scored on 2M rows with its two features, prepared outside the project, takes seconds.
    wide = tmp_path / "wide"
    two = ("--set", "prepare.synthetic.n_samples=2000000", "--set", "prepare.synthetic.n_features=2")
    sh([sys.executable, "-m", "pipeline", "prepare", "--prepared", str(wide), *big[:2], *two], project, run_env())
    points = {
        "prepare": (("prepare", *big), lambda: any((project / "data").glob(".prepared.*.tmp"))),
        "train": (("train", "--set", "train.epochs=10000000"), training),
        "evaluate": (("evaluate", "--prepared", str(wide)), running_runs),
        # Under a new name: a model to log and register, seconds of work (reusing the version takes a moment).
        "register": (("register", "--set", "register.model_name=Interrupted"), running_runs),
    }
    for name, (args, reached) in points.items():
        proc = stage(project, log, *args)
        wait_for(reached, proc, f"the middle of {name}")
        took, code = signalled(proc, signum)
        message = log.read_text()
        assert code == 128 + signum, message
        assert took < 2.0, f"{name} took {took:.2f} s to exit"
        print(f"{signal.Signals(signum).name} mid-{name}: exited in {took:.2f} s")
        assert f"interrupted by {signal.Signals(signum).name}" in message and "Traceback" not in message
        assert not leftovers(project), name
        assert "RUNNING" not in statuses(client), name
        for output, data in before.items():  # intact, byte for byte
            assert (project / output).read_bytes() == data, (name, output)
    found = statuses(client)
    assert found.count("KILLED") == 5 and len(found) == runs_before + 3  # only the first baseline run finished
    dvc(project, "repro", "--force")  # recovers: every stage runs again and succeeds
    assert "RUNNING" not in statuses(client)
    assert_up_to_date(project)


def test_sigkill_leftovers_are_cleaned_by_the_next_run(project, tmp_path):
    dvc(project, "repro")
    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    log = tmp_path / "stage.log"
    big = ("--set", "prepare.source=synthetic", "--set", "prepare.synthetic.n_samples=3000000")

    proc = stage(project, log, "prepare", *big)
    wait_for(lambda: any((project / "data").glob(".prepared.*.tmp")), proc, "prepare's temp folder")
    signalled(proc, signal.SIGKILL)
    assert leftovers(project)  # nothing could remove it...
    proc = stage(project, log, "train", "--set", "train.epochs=10000000")
    wait_for(lambda: "Epoch    0" in log.read_text() and statuses(client).count("RUNNING") == 2, proc, "training")
    signalled(proc, signal.SIGKILL)
    assert statuses(client).count("RUNNING") == 2  # ...nor end its runs

    # The next command of any kind clears both, not only the same stage run again.
    sh([sys.executable, "-m", "pipeline", "history"], project, run_env())
    assert not leftovers(project)
    found = statuses(client)
    assert "RUNNING" not in found and found.count("KILLED") == 2

    # A registration killed after creating its version, before moving @challenger to it.
    client.delete_registered_model_alias("BinaryClassifier", "challenger")
    dvc(project, "repro", "--force")
    assert str(client.get_model_version_by_alias("BinaryClassifier", "challenger").version) == "1"


def test_ctrl_c_on_dvc_repro_then_repro_recovers(project, tmp_path):
    params = project / "params.yaml"
    original = params.read_text()
    params.write_text(original.replace("epochs: 1000", "epochs: 10000000"))
    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    log = tmp_path / "repro.log"
    env = run_env(DVC_SITE_CACHE_DIR=str(project.parent / "dvc-site"))
    with log.open("w") as out:  # its own process group, as a terminal's foreground job
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "dvc"), "repro"], cwd=project, env=env, stdout=out, stderr=out,
            start_new_session=True,
        )  # fmt: skip
    wait_for(lambda: "Epoch    0" in log.read_text() and statuses(client).count("RUNNING") == 2, proc, "training")
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
    assert proc.wait(timeout=30) != 0
    assert "RUNNING" not in statuses(client) and "KILLED" in statuses(client)
    assert not leftovers(project)
    params.write_text(original)
    dvc(project, "repro")
    assert_up_to_date(project)


def start_tracking_server(store: Path, port: int) -> subprocess.Popen:
    """A real `mlflow server` on a sqlite store, in its own process group (so that it can be killed whole)."""
    args = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{store}",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    env = run_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 90
    while not _answers(f"http://127.0.0.1:{port}/health"):
        assert proc.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
        time.sleep(0.3)
    return proc


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except requests.RequestException:
        return False


def test_a_tracking_server_that_dies_mid_run_ends_it_with_one_message(project, tmp_path):
    """Training goes on while the server is killed: the run ends within 60 s saying so; Ctrl-C is not held."""
    port = free_port()
    url, store = f"http://127.0.0.1:{port}", tmp_path / "server.db"
    env = run_env(MLFLOW_TRACKING_URI=url)
    log = tmp_path / "run.log"
    long_run = [sys.executable, "-m", "pipeline", "run", "--set", "train.epochs=100000000", "--set",
                "train.log_every=2000"]  # fmt: skip
    client = MlflowClient(url)
    for started, ending in enumerate(("server death", "SIGTERM while it retries"), start=1):
        server = start_tracking_server(store, port)
        with log.open("w") as out:
            proc = subprocess.Popen(long_run, cwd=project, env=env, stdout=out, stderr=out)

        # Training runs beside the store work: on a fast machine epoch 2000 came before the runs were created.
        # This run's two are in the store once there are two per run started, and the second run has marked
        # the two the first left RUNNING as KILLED (under load, those two alone once passed for this run's).
        def its_runs_are_in(runs: int = 2 * started) -> bool:
            found = statuses(client)
            return len(found) == runs and found.count("RUNNING") == 2

        try:
            wait_for(lambda: "Epoch 2000/" in log.read_text() and its_runs_are_in(), proc, "its runs in the store")
        finally:  # the kill the test is about; on a failed wait, no server left behind
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        died = time.monotonic()
        if ending == "server death":
            code = proc.wait(timeout=60)
            took = time.monotonic() - died
            message = log.read_text()
            print(f"a dead tracking server ended the run in {took:.1f} s")
            assert code == 1 and "Traceback" not in message, message
            assert f"the MLflow tracking server {url} stopped answering" in message and "make server" in message
        else:
            time.sleep(1.5)  # a log line's call is retrying by now
            took, code = signalled(proc, signal.SIGTERM)
            assert code == 128 + signal.SIGTERM and took < 2.0, (took, log.read_text())
        assert not (project / "models" / "model.pt").exists() and not leftovers(project)
    # Back up: the next command of any kind marks the runs the dead process left RUNNING.
    server = start_tracking_server(store, port)
    try:
        sh([sys.executable, "-m", "pipeline", "history"], project, env, ok=False)
        found = statuses(client)
        assert "RUNNING" not in found and found.count("KILLED") == 4, found
    finally:
        os.killpg(server.pid, signal.SIGKILL)
