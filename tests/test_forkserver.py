"""DVC's stages through the warm server (pipeline/forkserver.py): same outputs, same signals, same records."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import run_env, sh
from tests.test_e2e import assert_up_to_date
from tests.test_kills import leftovers, statuses, wait_for

OUTPUTS = ("models/model.pt", "models/history.csv", "metrics/evaluate.json", "plots/roc.json")


@pytest.fixture
def warm(project: Path, tmp_path: Path):
    """The environment of a user's `dvc repro` (server on), its servers' folder private to this test."""
    temp = Path(tempfile.mkdtemp(prefix="fs", dir="/tmp"))  # short: a socket's path has at most 107 bytes
    env = run_env(PIPELINE_FORKSERVER="1", TMPDIR=str(temp), DVC_SITE_CACHE_DIR=str(tmp_path / "dvc-site"))
    folder = temp / f"pipeline-forkserver-{os.getuid()}"
    yield env, folder
    for lock in folder.glob("*.lock"):  # stop this test's servers rather than leave them to their idle timeout
        text = lock.read_text().strip()
        if text:
            try:
                os.kill(int(text), signal.SIGTERM)
            except ProcessLookupError:
                pass
            wait_for_exit(int(text))  # it removes its files as it goes
    shutil.rmtree(temp)


def wait_for_exit(pid: int, timeout: float = 30) -> None:
    """Until the process has ended (gone, or a zombie its parent has not reaped)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX":
                return
        except FileNotFoundError:
            return
        assert time.monotonic() < deadline, f"process {pid} did not end"
        time.sleep(0.05)


def dvc(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return sh([str(Path(sys.executable).parent / "dvc"), *args], project, env)


def served(folder: Path) -> list[int]:
    """The pids of the commands this test's servers have forked, in order."""
    return [int(line.rsplit(" ", 1)[1]) for log in folder.glob("*.log") for line in log.read_text().splitlines()
            if " forked " in line]  # fmt: skip


def wait_for_server(folder: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not any(folder.glob("*.sock")):
        assert time.monotonic() < deadline, "no server started"
        time.sleep(0.1)


def wait_for_state(pid: int, stopped: bool, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T") != stopped:
        assert time.monotonic() < deadline, f"process {pid} not {'stopped' if stopped else 'running'}"
        time.sleep(0.05)


def test_stages_forked_from_the_server_write_what_cold_ones_write(project, warm):
    env, folder = warm
    cold = {**env, "PIPELINE_FORKSERVER": "0"}
    dvc(project, cold, "repro")
    expected = {name: (project / name).read_bytes() for name in OUTPUTS}
    assert not folder.exists()  # switched off: no server, nothing started
    typed = [sys.executable, "-m", "pipeline", "history"]  # a command typed in a shell, not run by DVC
    sh(typed, project, env)
    assert not any(folder.glob("*.lock"))  # no server to use, and it starts none

    dvc(project, env, "repro", "--force")  # the first stage starts the server; the rest run where it is ready
    wait_for_server(folder)
    before = len(served(folder))
    done = dvc(project, env, "repro", "--force")
    out = done.stdout
    assert len(served(folder)) == before + 5  # tracking, prepare, train, evaluate, register: all forked
    assert "Traceback" not in done.stderr, done.stderr  # a command's socket closing after its end is no kill
    assert "Epoch 1000/1000 Cost: 0.019843 Accuracy 100.00%" in out  # the stage's stdout is DVC's
    assert "@champion" in out
    for name, data in expected.items():
        assert (project / name).read_bytes() == data, name
    uri = f"sqlite:///{project / 'mlflow.db'}"
    assert set(statuses(MlflowClient(uri))) == {"FINISHED"}
    assert_up_to_date(project)

    # Typed by hand while a server runs: forked too (predict after a repro skips the imports), the same answer.
    count = len(served(folder))
    assert sh(typed, project, env).stdout == sh(typed, project, cold).stdout
    assert len(served(folder)) == count + 1
    sh([sys.executable, "-m", "pipeline", "ui", "--help"], project, env)  # runs until stopped: its own process
    assert len(served(folder)) == count + 1

    # Edited code never runs in a server that imported the old: a new key, a new server.
    locks = set(folder.glob("*.lock"))
    cli = project / "pipeline" / "cli.py"
    cli.write_text(cli.read_text() + "\n# edited\n")
    dvc(project, env, "repro")
    assert len(set(folder.glob("*.lock")) - locks) == 1


def test_signals_reach_a_forked_stage_and_a_vanished_command_stops_it(project, warm, tmp_path):
    env, folder = warm
    dvc(project, {**env, "PIPELINE_FORKSERVER": "0"}, "repro")
    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    before = {name: (project / name).read_bytes() for name in OUTPUTS}
    log = tmp_path / "train.log"
    stage_env = {**env, "DVC_STAGE": "train", "DVC_ROOT": str(project)}
    train = [sys.executable, "-m", "pipeline", "train", "--set", "train.epochs=10000000"]
    sh([sys.executable, "-m", "pipeline", "tracking", "--tracking", "models/tracking.json"], project, stage_env)
    wait_for_server(folder)

    def training() -> bool:
        return "Epoch    0" in log.read_text() and statuses(client).count("RUNNING") == 2

    for signum in (signal.SIGINT, signal.SIGKILL):
        count = len(served(folder))
        with log.open("w") as out:
            proc = subprocess.Popen(train, cwd=project, env=stage_env, stdout=out, stderr=out)
        wait_for(training, proc, "training")
        assert len(served(folder)) == count + 1  # it runs in a fork of the server
        forked = served(folder)[-1]
        if signum == signal.SIGINT:  # Ctrl-Z stops the fork with the command, fg or bg resumes both
            proc.send_signal(signal.SIGTSTP)
            wait_for_state(forked, stopped=True)
            proc.send_signal(signal.SIGCONT)
            wait_for_state(forked, stopped=False)
        proc.send_signal(signum)
        code = proc.wait(timeout=30)
        if signum == signal.SIGINT:  # forwarded: the stage stops as it would in its own interpreter
            assert code == 130 and "interrupted by SIGINT" in log.read_text(), log.read_text()
            assert "Traceback" not in log.read_text(), log.read_text()
        deadline = time.monotonic() + 30  # SIGKILL: the fork sees its command's socket close, stops as on SIGHUP
        while "RUNNING" in statuses(client) or Path(f"/proc/{forked}").exists():
            assert time.monotonic() < deadline, (signum, statuses(client))
            time.sleep(0.1)
        assert not leftovers(project)
        for name, data in before.items():
            assert (project / name).read_bytes() == data, (signum, name)
    assert statuses(client).count("KILLED") == 4
    dvc(project, env, "repro")
    assert_up_to_date(project)


def test_run_typed_by_hand_on_ray_in_a_fork_starts_one_ray_for_all_its_stages(project, warm):
    """`run` on Ray in a fork of the server: one local Ray instance, which evaluate's child process joins."""
    import pandas as pd

    env, folder = warm
    stage_env = {**env, "DVC_STAGE": "tracking", "DVC_ROOT": str(project)}
    sh([sys.executable, "-m", "pipeline", "tracking", "--tracking", "models/tracking.json"], project, stage_env)
    wait_for_server(folder)
    table, parts = pd.read_csv(project / "data/raw/tutorial.csv"), project / "data/raw/parts"
    parts.mkdir()
    for i, rows in enumerate((table.iloc[:3], table.iloc[3:])):
        rows.to_parquet(parts / f"part-{i}.parquet")
    count = len(served(folder))
    on_ray = ["--set", f"prepare.source={parts}", "--set", "cluster.engine=ray", "--set", "cluster.workers=2"]
    # Before, the child forked after ray.shutdown() (gRPC's threads still running) hung or died without a word.
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", *on_ray, "--out-dir", "on-ray"], cwd=project, env=env,
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(served(folder)) == count + 1  # typed by hand, forked by the server
    assert "in 2 parts on Ray" in done.stdout and "evaluation rows scored on Ray" in done.stdout
    assert done.stderr.count("Started a local Ray instance") == 1, done.stderr  # Ray's own log line


def test_a_server_stopped_by_a_signal_tidies_up_and_a_new_one_clears_what_dead_ones_left(project, warm):
    """A server killed outright leaves its socket, lock and log; the next server to start removes them."""
    env, folder = warm
    folder.mkdir(mode=0o700, parents=True)
    dead = [folder / f"{'0' * 32}{suffix}" for suffix in (".lock", ".log", ".sock", ".sock.99999")]
    for leftover in dead:
        leftover.write_text("99999\n")
        os.utime(leftover, (time.time() - 3600,) * 2)  # an hour ago: no server is starting there
    starting = folder / f"{'1' * 32}.lock"  # a server that began a moment ago, its lock not yet taken
    starting.touch()
    stage_env = {**env, "DVC_STAGE": "tracking", "DVC_ROOT": str(project)}
    sh([sys.executable, "-m", "pipeline", "tracking", "--tracking", "models/tracking.json"], project, stage_env)
    deadline = time.monotonic() + 120
    while not any(p.is_socket() for p in folder.glob("*.sock")):
        assert time.monotonic() < deadline, "no server started"
        time.sleep(0.1)
    assert not any(p.exists() for p in dead) and starting.exists()
    (lock,) = set(folder.glob("*.lock")) - {starting}
    pid = int(lock.read_text())
    os.kill(pid, signal.SIGTERM)
    wait_for_exit(pid)
    assert [p.name for p in folder.iterdir()] == [starting.name]  # its socket, lock and log removed
