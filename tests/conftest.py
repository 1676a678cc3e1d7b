"""Shared fixtures: a migrated sqlite MLflow store made once, and temp copies of the project."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = [
    "pipeline",
    "data/raw",
    "dvc.yaml",
    "params.yaml",
    "MLproject",
    "python_env.yaml",
    "requirements.txt",
    ".dvc/config",
    ".dvc/plots",
    ".dvcignore",
    ".gitignore",
]


MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME")


@pytest.fixture(autouse=True)
def isolated_mlflow(monkeypatch: pytest.MonkeyPatch):
    """No test sees another's store: MLflow's variables cleared, its process-wide URIs reset afterwards.

    mlflow.set_tracking_uri/set_registry_uri (which the stages call) also export their URI into
    os.environ, so both the globals and the variables are put back.
    """
    for name in MLFLOW_ENV:
        monkeypatch.delenv(name, raising=False)
    yield
    if "mlflow" in sys.modules:
        import mlflow

        while mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


def prepared(source, where: Path):
    """A source through the prepare stage's own path (validated, written, mapped), every row as train."""
    from pipeline import dataset, preparation

    preparation.prepare_dir(where, source, 0.0, 1, False, "error")
    return dataset.load_prepared(where)


@pytest.fixture(scope="session")
def template_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, fully migrated sqlite store; creating one costs seconds, copying it does not."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    here = os.getcwd()
    os.chdir(db.parent)  # MLflow roots experiment Default's artifacts in the creating process's cwd
    try:
        MlflowClient(f"sqlite:///{db}").search_experiments()
    finally:
        os.chdir(here)
    return db


@pytest.fixture
def store_uri(tmp_path: Path, template_store: Path) -> str:
    """A fresh real sqlite store in this test's temp dir."""
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(template_store, db)
    return f"sqlite:///{db}"


def run_env(**extra: str) -> dict[str, str]:
    """Environment for subprocesses: this venv first on PATH, DVC quiet and self-contained."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    # Each test's project is its own server key (its folder is on sys.path): a server per test would preload
    # in the background beside the next tests. tests/test_forkserver.py turns it on in a folder of its own.
    env["PIPELINE_FORKSERVER"] = "0"
    env.update(
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.com",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.com",
    )
    env.update(extra)
    return env


def sh(args: list[str], cwd: Path, env: dict[str, str], ok: bool = True) -> subprocess.CompletedProcess:
    """Run a command, failing the test with its output when it exits non-zero unexpectedly."""
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if ok and proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def project(tmp_path: Path, template_store: Path) -> Path:
    """The project copied into a temp git repo with one commit, its default store pre-created."""
    root = tmp_path / "project"
    for name in PROJECT_FILES:
        src, dst = REPO / name, root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dst)
    shutil.copy(template_store, root / "mlflow.db")  # where the default URI points: <root>/mlflow.db
    env = run_env(DVC_SITE_CACHE_DIR=str(tmp_path / "dvc-site"))
    sh(["git", "init", "-q"], root, env)
    sh(["git", "add", "-A"], root, env)
    sh(["git", "commit", "-qm", "init"], root, env)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, body text) from one HTTP request; (0, error) when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    except OSError as exc:
        return 0, str(exc)
    finally:
        conn.close()


def invoke_json(port: int, payload) -> tuple[int, dict]:
    status, text = request(port, "POST", "/invocations", json.dumps(payload).encode(), JSON)
    return status, json.loads(text)


JSON = {"Content-Type": "application/json"}
CSV = {"Content-Type": "text/csv"}


def dvc_command(project: Path, *args: str) -> tuple[list[str], dict[str, str]]:
    """This venv's `dvc` with args, and its environment (DVC's site cache beside the project)."""
    env = run_env(DVC_SITE_CACHE_DIR=str(project.parent / "dvc-site"))
    return [str(Path(sys.executable).parent / "dvc"), *args], env


def dvc(project: Path, *args: str, ok: bool = True):
    cmd, env = dvc_command(project, *args)
    return sh(cmd, project, env, ok=ok)
