"""Team mode for real: `pipeline server` (PostgreSQL + `mlflow server`), the pipeline through it, a DVC remote."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient

from pipeline.store import registry
from tests.conftest import REPO, free_port, invoke_json, run_env, sh


@pytest.fixture(scope="module")
def team_server():
    """The server `make server` runs, on a free port, its state in a temp folder the postgres user can reach."""
    if shutil.which("pg_config") is None:
        pytest.skip("PostgreSQL is not installed (no pg_config on PATH)")
    folder = Path(tempfile.mkdtemp(prefix="team-server-"))
    folder.chmod(0o755)  # as root, PostgreSQL runs as `postgres`, which must enter it
    port = free_port()
    log = folder.parent / f"{folder.name}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "server", "--folder", str(folder / "state"), "--port", str(port)],
            env=run_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while "Ctrl-C stops both" not in log.read_text(errors="replace"):
        if proc.poll() is not None:
            text = log.read_text(errors="replace")
            if "PostgreSQL" in text:
                pytest.skip(f"PostgreSQL cannot start here: {text[-500:]}")
            pytest.fail(f"the team server exited {proc.returncode}:\n{text[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the team server did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.3)
    yield url, folder / "state"
    proc.send_signal(signal.SIGTERM)  # what Ctrl-C or `kill` does: both servers stop
    assert proc.wait(timeout=60) == 0 and "MLflow and PostgreSQL stopped" in log.read_text(errors="replace")
    deadline = time.monotonic() + 15
    while str(folder) in subprocess.run(["ps", "-eo", "cmd"], capture_output=True, text=True).stdout:
        assert time.monotonic() < deadline, "a server process outlived `pipeline server`"
        time.sleep(0.2)
    shutil.rmtree(folder, ignore_errors=True)
    log.unlink(missing_ok=True)


def test_pipeline_registry_serving_and_batch_scoring_through_the_team_server(team_server, project, tmp_path):
    url, state = team_server
    (project / "mlflow.db").unlink()  # the local default store: nothing may land there
    env = run_env(MLFLOW_TRACKING_URI=url, DVC_SITE_CACHE_DIR=str(project.parent / "dvc-site"))
    out = sh([sys.executable, "-m", "pipeline", "run"], project, env).stdout
    assert "@champion" in out
    client = MlflowClient(url)
    version = client.get_model_version_by_alias("BinaryClassifier", "champion")
    assert str(version.version) == "1"
    assert any(state.joinpath("artifacts").rglob("MLmodel"))  # artifacts went to the server, proxied
    history = sh([sys.executable, "-m", "pipeline", "history"], project, env).stdout
    assert "champion" in history and "first champion" in history

    # Batch scoring, through the registry on the server.
    (tmp_path / "in.csv").write_text("x1,x2\n1,2\n6,2\n")
    sh([sys.executable, "-m", "pipeline", "predict", "--input", str(tmp_path / "in.csv"),
        "--output", str(tmp_path / "out.csv")], project, env)  # fmt: skip
    assert (tmp_path / "out.csv").read_text().splitlines()[0] == "probability,label"

    # `make serve`: the champion served from the server's registry.
    port = free_port()
    serve_log = (tmp_path / "serve.log").open("w")
    serving = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "serve", "--port", str(port)], cwd=project, env=env,
        stdout=serve_log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            assert serving.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.3)
        status, answer = invoke_json(port, {"dataframe_split": {"columns": ["x1", "x2"], "data": [[1, 2], [6, 2]]}})
        assert status == 200 and [row["label"] for row in answer["predictions"]] == [0, 1]
    finally:
        os.killpg(serving.pid, signal.SIGTERM)
        serving.wait(timeout=30)
    assert not any((project / name).exists() for name in ("mlflow.db", "mlruns", "mlartifacts"))


def test_a_workspace_that_ran_locally_moves_to_the_team_server_and_back(team_server, project):
    """The README's team block on a clone that ran on its own store first, then back: each command works or says
    in one line which store has what."""
    url, _ = team_server
    params = project / "params.yaml"  # a model name of its own: the other tests' BinaryClassifier is on the server
    params.write_text(params.read_text().replace("model_name: BinaryClassifier", "model_name: Moving"))
    local = run_env(DVC_SITE_CACHE_DIR=str(project.parent / "dvc-site"))
    team = {**local, "MLFLOW_TRACKING_URI": url}
    report = [sys.executable, "-m", "pipeline", "report"]
    sh([sys.executable, "-m", "dvc", "repro"], project, local)
    sh(report, project, local)
    refused = sh(report, project, team, ok=False)  # before `make run` there: one line, both stores named
    assert refused.returncode == 1 and "Traceback" not in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert f"the store {url} has no version of Moving" in refused.stderr
    assert "registered its model in the store mlflow.db in this repository" in refused.stderr
    ran = sh([sys.executable, "-m", "dvc", "repro"], project, team).stdout  # `make run` = dvc repro + report
    assert re.findall(r"Running stage '(\w+)'", ran) == ["tracking", "train", "evaluate", "register"]
    sh(report, project, team)
    assert json.loads((project / "models/registered.json").read_text())["store"] == url
    for command in (["history"], ["predict", "--input", "data/raw/tutorial.csv", "--output", "scored.csv"]):
        sh([sys.executable, "-m", "pipeline", *command], project, team)
    # Back on the local store: it runs there again (the local store keeps what it had), and all works.
    again = sh([sys.executable, "-m", "dvc", "repro"], project, local).stdout
    assert re.findall(r"Running stage '(\w+)'", again) == ["tracking", "train", "evaluate", "register"]
    sh(report, project, local)
    assert "reused" in sh([sys.executable, "-m", "pipeline", "history"], project, local).stdout


def test_dvc_remote_round_trip_reproduces_the_champions_evaluation(team_server, project, tmp_path):
    url, _ = team_server
    (project / "mlflow.db").unlink()
    env = run_env(MLFLOW_TRACKING_URI=url, DVC_SITE_CACHE_DIR=str(project.parent / "dvc-site"))
    sh([sys.executable, "-m", "dvc", "repro"], project, env)
    sh([sys.executable, "-m", "dvc", "push"], project, env)  # to the default remote: ../dvc-remote beside the repo
    assert any((project.parent / "dvc-remote").rglob("*"))
    sh(["git", "add", "dvc.lock"], project, env)
    sh(["git", "commit", "-qm", "pipeline outputs"], project, env)

    clone = project.parent / "clone"
    sh(["git", "clone", "-q", str(project), str(clone)], project.parent, env)
    sh([sys.executable, "-m", "dvc", "pull"], clone, env)
    for output in ("data/prepared/X_train-00000.npy", "models/model.pt"):
        assert (clone / output).read_bytes() == (project / output).read_bytes()
    # The clone re-evaluates the pulled model on the pulled data: the champion's numbers, exactly. It has no
    # record of the training run (a record of a store, not a DVC output): the store finds it by the checkpoint.
    assert not (clone / "models/mlflow_run.json").exists()
    sh([sys.executable, "-m", "pipeline", "evaluate"], clone, env)
    again = json.loads((clone / "metrics/evaluate.json").read_text())
    assert again == json.loads((project / "metrics/evaluate.json").read_text())
    champion = MlflowClient(url).get_model_version_by_alias("BinaryClassifier", "champion")
    logged = MlflowClient(url).get_run(champion.run_id).data.metrics
    assert {k: logged[f"eval_{k}"] for k in again["model"]} == again["model"]


def test_concurrent_registrations_through_the_server(team_server, tmp_path):
    """Four pipelines at once against the server: nothing lost, one checkpoint one version, the lock released."""
    url, _ = team_server
    procs = []
    for k in range(4):
        work = tmp_path / f"work{k}"
        shutil.copytree(REPO / "data/raw", work / "data/raw")
        for name in ("params.yaml", "dvc.yaml"):
            shutil.copy(REPO / name, work / name)
        args = [sys.executable, "-m", "pipeline", "run", "--set", "register.model_name=Raced"]
        env = run_env(MLFLOW_TRACKING_URI=url)
        proc = subprocess.Popen(args, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append((work, proc))
    for _, proc in procs:
        out = proc.communicate(timeout=600)[0].decode()
        assert proc.returncode == 0, out
    client = MlflowClient(url)
    (version,) = client.search_model_versions("name = 'Raced'")
    registered = [json.loads((work / "models/registered.json").read_text()) for work, _ in procs]
    assert sum(r["new_version"] for r in registered) == 1
    assert {r["version"] for r in registered} == {int(version.version)}
    records = registry.history(client, url, "Raced")
    assert sorted(r["alias"] for r in records if "alias" in r) == ["challenger", "champion"]  # once each
    assert not client.search_registered_models("name = 'Raced.lock'")  # released


def process_tree(root: int) -> dict[int, int]:
    """The processes descending from `root` (itself included), each with its RSS in KiB, read from /proc."""
    parents, rss = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            status = (stat.parent / "status").read_text()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
        rss[int(stat.parent.name)] = int(next((x.split()[1] for x in status.splitlines() if x.startswith("VmRSS")), 0))
    found, todo = {}, [root]
    while todo:
        pid = todo.pop()
        found[pid] = rss.get(pid, 0)
        todo += [child for child, parent in parents.items() if parent == pid]
    return found


def start_server(folder: Path, via_shell: bool = False) -> tuple[subprocess.Popen, int, str]:
    """`pipeline server` on a free port in its own process group (as a terminal runs `make server`), once ready."""
    port = free_port()
    command = [sys.executable, "-m", "pipeline", "server", "--folder", str(folder), "--port", str(port)]
    if via_shell:  # what `make server` is to it: a parent that may die first
        command = ["sh", "-c", shlex.join(command) + "; true"]
    log = folder.parent / "server.log"
    proc = subprocess.Popen(
        command, env=run_env(), stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 180
    while "Ctrl-C stops both" not in log.read_text(errors="replace"):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
        time.sleep(0.3)
    return proc, port, log.read_text(errors="replace")


def test_make_server_leaves_nothing_behind_and_starts_over_what_a_crash_left():
    """Each way a foreground server ends stops PostgreSQL and MLflow within 15 s; a crash's leftovers never block."""
    if shutil.which("pg_config") is None:
        pytest.skip("PostgreSQL is not installed (no pg_config on PATH)")
    home = Path(tempfile.mkdtemp(prefix="make-server-"))  # as root, PostgreSQL runs as `postgres`: it must enter
    home.chmod(0o755)
    folder = home / "state"
    endings = {
        "a closed terminal (SIGHUP to its group)": lambda proc: os.killpg(proc.pid, signal.SIGHUP),
        "SIGTERM": lambda proc: proc.send_signal(signal.SIGTERM),
        "Ctrl-C (SIGINT to its group)": lambda proc: os.killpg(proc.pid, signal.SIGINT),
        "SIGKILL": lambda proc: proc.send_signal(signal.SIGKILL),
        "SIGKILL of make": lambda proc: proc.send_signal(signal.SIGKILL),  # the shell above it
    }
    for how, end in endings.items():
        proc, port, _ = start_server(folder, via_shell=how == "SIGKILL of make")
        tree = process_tree(proc.pid)
        if how.startswith("a closed"):  # the first start: its footprint at idle, on this 2-core machine
            time.sleep(5)
            rss = sum(process_tree(proc.pid).values()) / 1024
            print(f"team server at idle: {len(tree)} processes, {rss:.0f} MiB RSS")
            assert rss < 1024 and len(tree) <= 13
        end(proc)
        deadline = time.monotonic() + 15
        while alive := [pid for pid in tree if Path(f"/proc/{pid}").exists() and pid != proc.pid]:
            assert time.monotonic() < deadline, f"{how}: {alive} outlived the server"
            time.sleep(0.2)
        proc.wait(timeout=30)
        assert not requests_answer(f"http://127.0.0.1:{port}/health")
    # A crash's lock file (its process gone) and a PostgreSQL left running on the folder by a dead server.
    (folder / "postgres" / "postmaster.pid").write_text("999999\n")
    proc, _, log = start_server(folder)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    bindir = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip()
    orphan = [*as_postgres, f"{bindir}/pg_ctl", "start", "-w", "-D", str(folder / "postgres"), "-l", "/dev/null",
              "-o", f"-k {folder / 'run'} -c listen_addresses="]  # fmt: skip
    subprocess.run(orphan, check=True, capture_output=True)
    (folder / "owner.json").write_text(json.dumps({"server": 999999, "postgres": 0, "mlflow": 0}))
    proc, _, log = start_server(folder)
    assert "creating a PostgreSQL cluster" not in log  # the same cluster, taken over
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    shutil.rmtree(home, ignore_errors=True)


def requests_answer(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except requests.RequestException:
        return False
