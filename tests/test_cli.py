"""The CLI against a real sqlite MLflow store: runs, failures marked FAILED, outputs left intact."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from click.testing import CliRunner
from mlflow import MlflowClient

from pipeline import preparation
from pipeline.cli import main
from pipeline.store import registry

from .conftest import REPO, free_port


@pytest.fixture
def workdir(tmp_path, store_uri, monkeypatch):
    shutil.copytree(REPO / "data/raw", tmp_path / "data/raw")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return tmp_path


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def runs(store_uri):
    client = MlflowClient(store_uri)
    exp = client.get_experiment_by_name("binary-classifier")
    return client, ([] if exp is None else client.search_runs([exp.experiment_id]))


def test_stages_in_order(workdir, store_uri, capfd):
    assert invoke("prepare").exit_code == 0
    result = invoke("train")
    assert result.exit_code == 0, result.output
    # Training runs in a child process (its imports overlap MLflow's): its lines go to the real stdout.
    assert "Epoch 1000/1000 Cost: 0.019843 Accuracy 100.00%" in capfd.readouterr().out
    assert "W = [[3.2534, 1.5181]], b = [-14.4839]" in result.output
    run_id = json.loads((workdir / "models/mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(store_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.lr"] == "1.0"
    assert run.data.tags["pipeline.family"] == "model" and len(run.data.tags["pipeline.data_sha256"]) == 64
    history = client.get_metric_history(run_id, "accuracy")
    assert [m.step for m in history] == list(range(1001)) and history[10].value == pytest.approx(4 / 6)
    assert (workdir / "models/history.csv").read_text().startswith("epoch,cost,accuracy\n0,0.5397")

    assert invoke("evaluate").exit_code == 0
    results = json.loads((workdir / "metrics/evaluate.json").read_text())
    assert set(results) == {"model", "baseline"} and results["model"].keys() == results["baseline"].keys()
    client, found = runs(store_uri)
    families = {r.data.tags["pipeline.family"]: r for r in found}
    assert set(families) == {"execution", "model", "baseline"}
    parent = families["execution"]
    for family in ("model", "baseline"):  # both children of one parent, both with the same params
        child = families[family]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.params == parent.data.params and child.data.params["prepare.features"] == "null"
        assert {k for k in child.data.metrics if k.startswith("eval_")} == {f"eval_{k}" for k in results["model"]}
        assert {"cost", "accuracy"} <= set(child.data.metrics)  # the baseline's: its fit on the train split
        assert [d.dataset.name for d in child.inputs.dataset_inputs] == ["tutorial.csv:train"]
        assert "roc.png" in [a.path for a in client.list_artifacts(child.info.run_id)]
    # Compare in the UI: the same metrics on both children, so no blank or NaN cell.
    assert set(families["model"].data.metrics) == set(families["baseline"].data.metrics)
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # opens on the runs
    assert {r.info.run_name for r in found} == {"no git", "BinaryClassifier · no git", "LogisticRegression · no git"}
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {
        "roc.png",
        "precision_recall.png",
        "calibration.png",
        "confusion.png",
    }
    for run in found:  # what makes each run identifiable, on every run
        assert run.info.status == "FINISHED" and run.data.tags["pipeline.device"] == "cpu"
        assert run.data.tags["pipeline.world_size"] == "1" and run.data.tags["pipeline.seed.train"] == "1"
        assert {"mlflow.user", "mlflow.source.name", "pipeline.version.mlflow", "pipeline.changed_params"} <= set(
            run.data.tags
        )
    roc = json.loads((workdir / "plots/roc.json").read_text())
    assert roc[0].keys() == {"fpr", "BinaryClassifier", "LogisticRegression"} and len(roc) == 101

    result = invoke("register")
    assert result.exit_code == 0, result.output
    registered = json.loads((workdir / "models/registered.json").read_text())
    assert registered["version"] == 1 and registered["aliases"] == ["challenger", "champion"]
    (logged,) = client.search_logged_models([parent.info.experiment_id])
    assert logged.source_run_id == run_id  # the LoggedModel's metrics are its evaluation, not epoch 0
    assert {m.key: m.value for m in logged.metrics} == {f"eval_{k}": v for k, v in results["model"].items()}
    # Unchanged inputs: no new version.
    assert invoke("register").exit_code == 0
    assert json.loads((workdir / "models/registered.json").read_text())["version"] == 1
    assert len(MlflowClient(store_uri, registry_uri=store_uri).search_model_versions("name = 'BinaryClassifier'")) == 1


def test_bad_csv_fails_clearly_and_keeps_earlier_outputs(workdir):
    assert invoke("prepare").exit_code == 0
    before = (workdir / "data/prepared/X_train-00000.npy").read_bytes()
    (workdir / "data/raw/bad.csv").write_text("x1,x2,y\n1,2,0\n2,oops,1\n")
    result = CliRunner().invoke(main, ["prepare", "--set", "prepare.source=data/raw/bad.csv"])
    assert result.exit_code == 1
    assert "data/raw/bad.csv, row 3, column 'x2': not a number: 'oops'" in result.output
    assert (workdir / "data/prepared/X_train-00000.npy").read_bytes() == before


def test_messy_table_with_positive_and_missing_drop(workdir, store_uri):
    rows = "x1,x2,answer\n1,2,no\n2,,yes\n3,1,no\n4,3,yes\n5,3,yes\n,2,no\n6,2,yes\n"
    (workdir / "data/raw/messy.csv").write_text(rows)
    args = ["--set", "prepare.source=data/raw/messy.csv", "--set", "prepare.label=answer"]
    result = CliRunner().invoke(main, ["prepare", *args])
    assert result.exit_code == 1 and "'no'; labels must be 0 or 1 (or set prepare.positive" in result.output
    args += ["--set", 'prepare.positive="yes"']
    result = CliRunner().invoke(main, ["prepare", *args])
    assert result.exit_code == 1 and "messy.csv, row 3, column 'x2': missing" in result.output
    result = CliRunner().invoke(main, ["run", *args, "--set", "prepare.missing=drop"])
    assert result.exit_code == 0, result.output
    assert "dropped 2 rows with a missing feature or label" in result.output
    client, found = runs(store_uri)
    assert {r.data.metrics["dropped_rows"] for r in found if r.data.tags["pipeline.family"] != "baseline"} == {2.0}


def test_bad_params_fail_by_key(workdir):
    result = CliRunner().invoke(main, ["train", "--set", "train.lr=fast"])
    assert result.exit_code == 1 and "train.lr: expected float, got str 'fast'" in result.output
    (workdir / "params.yaml").write_text((workdir / "params.yaml").read_text().replace("lr: 1.0", "lr: 1.0\n  lrr: 2"))
    result = CliRunner().invoke(main, ["prepare"])
    assert result.exit_code == 1 and "unknown key train.lrr" in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_failed_training_marks_the_run_failed_and_keeps_outputs(workdir, store_uri):
    assert invoke("prepare").exit_code == 0
    assert invoke("train").exit_code == 0
    before = {p: (workdir / p).read_bytes() for p in ("models/model.pt", "models/mlflow_run.json")}
    result = CliRunner().invoke(main, ["train", "--set", "train.device=cuda"])
    assert result.exit_code == 1 and "'cuda' was requested but is not available" in result.output
    _, found = runs(store_uri)
    assert sorted(r.info.status for r in found) == ["FAILED", "FAILED", "FINISHED", "FINISHED"]  # parents and children
    assert {p: (workdir / p).read_bytes() for p in before} == before


def test_divergence_fails_the_run_and_registers_nothing(workdir, store_uri):
    # (adam at lr 1e6 is no such case: its steps are normalised, and it separates the six points, cost 0)
    result = CliRunner().invoke(main, ["run", "--set", "train.lr=1000000.0"])
    assert result.exit_code == 1
    assert "train: diverged at epoch 1: the cost rose to" in result.output and "lower train.lr" in result.output
    assert "had not come back by epoch 300" in result.output  # three log lines (log_every 100) far off
    client, found = runs(store_uri)
    assert sorted(r.info.status for r in found) == ["FAILED", "FAILED"]  # the parent and the model run
    assert not (workdir / "models/model.pt").exists() and not client.search_registered_models()


def test_a_bold_learning_rate_spikes_then_trains_and_registers(workdir, store_uri):
    """lr 3.0 on the tutorial: the cost jumps far above its start in the first epochs, then ends below lr 1's."""
    result = invoke("run", "--set", "train.lr=3.0")
    assert result.exit_code == 0, result.output
    cost = [float(line.split(",")[1]) for line in (workdir / "models/history.csv").read_text().splitlines()[1:]]
    assert max(cost[:10]) > 10 * cost[0] and cost[-1] < 0.019843  # far off, then back, and better than lr 1
    assert json.loads((workdir / "models/registered.json").read_text())["version"] == 1


def closed_port() -> int:
    import socket

    with socket.socket() as sock:  # bound then closed: nothing listens there
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("http://127.0.0.1:{port}", "does not answer (ConnectionError): start it (`make server`)"),
        ("sqlite:///{tmp}/file.txt/mlflow.db", "cannot open the MLflow store"),  # a file where a folder should be
        ("sqlite://relative.db", "Invalid SQLite URL"),
        ("nosuchscheme://x", "cannot open the MLflow store nosuchscheme://x"),
    ],
)
def test_bad_store_fails_fast_by_uri(workdir, tmp_path, monkeypatch, uri, message):
    import time

    (tmp_path / "file.txt").write_text("")
    uri = uri.format(port=closed_port(), tmp=tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert invoke("prepare").exit_code == 0
    started = time.monotonic()
    result = CliRunner().invoke(main, ["train"])
    assert time.monotonic() - started < 10
    assert result.exit_code == 1 and message in result.output and uri in result.output, result.output
    assert not (workdir / "models/model.pt").exists()


def test_a_store_without_the_training_run_is_a_clear_error(workdir, tmp_path, template_store, monkeypatch):
    assert invoke("prepare").exit_code == 0
    assert invoke("train").exit_code == 0
    # A run record that names no run of this store: the store finds the run by the checkpoint it wrote.
    (workdir / "models/mlflow_run.json").write_text('{"run_id": "0123456789abcdef0123456789abcdef"}')
    assert invoke("evaluate").exit_code == 0
    # Another store never trained this model: one line naming that store and the one the record names.
    (tmp_path / "other").mkdir()
    shutil.copy(template_store, tmp_path / "other/mlflow.db")
    other = f"sqlite:///{tmp_path / 'other/mlflow.db'}"
    assert invoke("train").exit_code == 0  # a record of this store again
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    result = CliRunner().invoke(main, ["evaluate"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"no run in the store {other} trained this model" in result.output
    assert "names runs in the store store/mlflow.db in this repository" in result.output  # the store in use before


def test_child_process_outcomes():
    from pipeline.child import InChild

    assert InChild(sum, [1, 2, 3]).result() == 6
    with pytest.raises(ValueError, match="invalid literal") as raised:
        InChild(int, "x").result()
    assert any("in the int process" in note for note in raised.value.__notes__)
    with pytest.raises(RuntimeError, match=r"the _exit process died \(exit code 3\)"):
        InChild(os._exit, 3).result()


def test_champion_moves_only_on_evidence_or_by_hand(workdir, store_uri):
    def pipeline_run(*overrides):
        args = [x for o in overrides for x in ("--set", o)]
        result = CliRunner().invoke(main, ["run", *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return json.loads((workdir / "models/registered.json").read_text())

    client = MlflowClient(store_uri, registry_uri=store_uri)
    first = pipeline_run()
    assert first["version"] == 1 and first["aliases"] == ["challenger", "champion"]
    assert first["decision"]["reason"].startswith("first champion")
    # The same checkpoint again: v1 is reused, its evidence stays as written; the new run names v1.
    v1_tags = client.get_model_version("BinaryClassifier", "1").tags
    again = pipeline_run()
    assert again["version"] == 1 and not again["new_version"] and again["decision_run_id"] != first["decision_run_id"]
    assert client.get_model_version("BinaryClassifier", "1").tags == v1_tags
    reusing = client.get_run(again["decision_run_id"]).data.tags
    assert reusing["pipeline.registered_model"] == "BinaryClassifier" and reusing["pipeline.version_reused"] == "true"
    assert reusing["pipeline.registered_version"] == "1" and reusing["gate.reason"] == "v1 is already the champion"
    (reuse,) = [r for r in registry.history(client, store_uri, "BinaryClassifier") if "reused" in r]
    assert reuse["reused"] == "1" and again["decision_run_id"] in reuse["reason"]
    # lr=0.5: roc_auc 1.0 like the champion's on the same six rows. A tie is not an improvement.
    tie = pipeline_run("train.lr=0.5")
    assert tie["version"] == 2 and tie["aliases"] == ["challenger"] and not tie["decision"]["promote"]
    assert "a tie is not an improvement" in tie["decision"]["reason"]
    assert tie["decision"]["evidence"]["method"] == "DeLong" and tie["decision"]["evidence"]["n"] == 6
    # Barely trained: roc_auc 8/9 against the baseline's 1.0.
    weak = pipeline_run("train.epochs=1", "train.lr=0.001")
    assert weak["version"] == 3 and not weak["decision"]["promote"]
    assert "worse than the baseline" in weak["decision"]["reason"]
    # Other features than the champion's: registered, but never compared as if alike.
    other = pipeline_run("prepare.source=breast_cancer", "prepare.test_size=0.2", "prepare.standardize=true")
    assert other["version"] == 4 and not other["decision"]["promote"]
    assert "not comparable" in other["decision"]["reason"]
    assert str(client.get_model_version_by_alias("BinaryClassifier", "champion").version) == "1"

    # Breast cancer under its own name, gated on log_loss: the better model takes @champion, a worse one not.
    bc = [
        "prepare.source=breast_cancer", "prepare.test_size=0.3", "prepare.standardize=true",
        "register.model_name=BreastCancer", "register.metric=log_loss", "register.tolerance=1.0",
    ]  # fmt: skip
    rough = pipeline_run(*bc, "train.epochs=3", "train.lr=0.05")
    assert rough["aliases"] == ["challenger", "champion"]
    strong = pipeline_run(*bc, "train.optimizer=lbfgs", "train.C=1")
    evidence = strong["decision"]["evidence"]
    assert strong["decision"]["promote"] and evidence["low"] > 0 and evidence["method"] == "bootstrap"
    assert evidence["n"] == preparation.test_rows(0, 569, 0.3, 1).sum()  # the test rows of the 569
    assert evidence["seed"] == 1 and evidence["resamples"] == 1000
    middling = pipeline_run(*bc, "train.epochs=20", "train.lr=0.05")
    assert not middling["decision"]["promote"] and middling["decision"]["evidence"]["delta"] < 0
    assert str(client.get_model_version_by_alias("BreastCancer", "champion").version) == str(strong["version"])
    tags = client.get_model_version("BreastCancer", str(middling["version"])).tags
    assert tags["gate.decision"] == "not promoted" and tags["gate.champion"] == f"v{strong['version']}"
    saved = mlflow.artifacts.download_artifacts(run_id=middling["run_id"], artifact_path="gate/decision.json")
    decision = json.loads(Path(saved).read_text())
    assert decision["version"] == str(middling["version"]) and decision["evidence"] == middling["decision"]["evidence"]

    # A person rolls back, with a reason; the history shows every move, from the store alone.
    bc_name = ["--set", "register.model_name=BreastCancer"]
    result = invoke("promote", str(rough["version"]), "--reason", "rollback drill", *bc_name)
    assert result.exit_code == 0 and f"v{strong['version']} -> v{rough['version']}" in result.output
    assert str(client.get_model_version_by_alias("BreastCancer", "champion").version) == str(rough["version"])
    lines = invoke("history", *bc_name).output.splitlines()
    champion_moves = [line for line in lines if "@champion" in line]
    assert len(champion_moves) == 3 and "rollback drill" in champion_moves[-1] and "[manual]" in champion_moves[-1]
    assert "log_loss" in champion_moves[1] and f"bootstrap, n={evidence['n']}" in champion_moves[1]
    assert sum("@challenger" in line for line in lines) == 3
    refused = CliRunner().invoke(main, ["promote", "99", "--reason", "x", *bc_name])
    assert refused.exit_code == 1 and "has no version '99'" in refused.output


def test_run_on_ray_over_a_parquet_folder_gives_the_local_engines_parts_and_metrics(workdir):
    """cluster.engine ray: prepare's parts and evaluate's scores from tasks on a real local Ray instance: same bits."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(4)
    X = rng.normal(size=(6000, 24)).astype(np.float32) * np.linspace(0.5, 3, 24) + np.linspace(-1, 5, 24)
    frame = pd.DataFrame(X, columns=[f"x{j}" for j in range(24)])  # 24 features: BLAS tails differ by batch
    frame["y"] = (rng.random(6000) < 1 / (1 + np.exp(-(X[:, 0] - 0.2 * X[:, 1] + 1)))).astype(int)
    folder = workdir / "data/raw/table"
    folder.mkdir()
    for i, (lo, hi) in enumerate([(0, 2500), (2500, 4100), (4100, 5999), (5999, 6000)]):  # the last: one test row
        frame.iloc[lo:hi].to_parquet(folder / f"part-{i}.parquet")
    args = ["--set", f"prepare.source={folder}", "--set", "prepare.test_size=0.25", "--set", "prepare.standardize=true"]
    args += ["--set", "train.epochs=50", "--set", "train.log_every=50"]
    local = CliRunner().invoke(main, ["run", *args, "--out-dir", "local"])
    assert local.exit_code == 0, local.output
    on_ray = ["--set", "cluster.engine=ray", "--set", "cluster.workers=2"]
    result = CliRunner().invoke(main, ["run", *args, *on_ray, "--out-dir", "ray"])
    assert result.exit_code == 0, result.output
    assert "in 4 parts on Ray (2 tasks at a time)" in result.output
    assert re.search(r"\n\d+ evaluation rows scored on Ray, a task per part \(4 parts\)\n", result.output)
    prepared = {engine: workdir / engine / "prepared" for engine in ("local", "ray")}
    names = sorted(p.name for p in prepared["local"].iterdir())
    assert names == sorted(p.name for p in prepared["ray"].iterdir()) and len(names) == 17  # 4 parts x 4 + manifest
    for name in names:
        assert (prepared["ray"] / name).read_bytes() == (prepared["local"] / name).read_bytes(), name
    manifest = json.loads((prepared["ray"] / "meta.json").read_text())
    parts = [(p["first_row"], p["rows"], p["train"], p["test"]) for p in manifest["parts"]]
    assert [p[:2] for p in parts] == [(0, 2500), (2500, 1600), (4100, 1899), (5999, 1)] and parts[3][2:] == (0, 1)
    metrics = {engine: json.loads((workdir / engine / "evaluate.json").read_text()) for engine in ("local", "ray")}
    assert metrics["ray"] == metrics["local"]

    bad = frame.iloc[2500:4100].copy()
    bad.loc[bad.index[7], "x2"] = np.inf
    bad.to_parquet(folder / "part-1.parquet")
    before = (prepared["ray"] / "meta.json").read_bytes()
    result = CliRunner().invoke(main, ["prepare", "--prepared", str(prepared["ray"]), *args, *on_ray])
    assert result.exit_code == 1 and "part-1.parquet, row 8, column 'x2': missing, NaN or infinite" in result.output
    assert "Traceback" not in result.output and (prepared["ray"] / "meta.json").read_bytes() == before


def test_one_ray_instance_for_a_whole_run_is_joined_by_its_stages_and_their_child_processes(monkeypatch):
    """`run` on Ray starts one local instance: a stage here, and a child process, join it; it stops at the end."""
    import ray

    from pipeline.engines import one_ray, ray_cluster
    from pipeline.params import ClusterParams

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cluster = ClusterParams("ray", None, 2)
    joined = "from pipeline.engines import ray_cluster; from pipeline.params import ClusterParams; import ray\n"
    joined += "with ray_cluster(ClusterParams('ray', None, 2)) as n: print(n, ray.get_runtime_context().gcs_address)"
    with one_ray(cluster):
        address = os.environ["RAY_ADDRESS"]
        with ray_cluster(cluster) as workers:  # prepare's, in this process
            assert workers == 2 and ray.get_runtime_context().gcs_address == address
        assert ray.is_initialized()  # left running for the next stage
        child = subprocess.run([sys.executable, "-c", joined], capture_output=True, text=True, timeout=120)
        assert child.returncode == 0 and child.stdout.split() == ["2", address], child.stderr  # evaluate's child
    assert not ray.is_initialized() and "RAY_ADDRESS" not in os.environ
    with one_ray(ClusterParams("local", None, None)):
        assert "RAY_ADDRESS" not in os.environ and not ray.is_initialized()  # the local engine starts nothing


@pytest.fixture
def s3(tmp_path, monkeypatch):
    """A real S3 endpoint on a loopback port (moto's server), credentials and address in the environment as a
    user's would be; yields a pyarrow filesystem on it with the bucket `lake`."""
    import requests
    from pyarrow.fs import S3FileSystem

    port = free_port()
    with (tmp_path / "s3.log").open("w") as log:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log, stderr=log,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline and server.poll() is None, (tmp_path / "s3.log").read_text()
                time.sleep(0.1)
        endpoint = f"http://127.0.0.1:{port}"
        for name, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "x",
                            "AWS_DEFAULT_REGION": "us-east-1"}.items():  # fmt: skip
            monkeypatch.setenv(name, value)
        fs = S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True)
        fs.create_dir("lake")
        yield fs
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_parquet_dataset_on_an_object_store_gives_the_local_folders_parts_metrics_and_scores(workdir, s3):
    """prepare.source and predict --input by s3:// URI (Ray's workers reading their own files there): same bits."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(5)
    X = rng.normal(size=(75001, 6)).astype(np.float32) * np.linspace(0.5, 3, 6) + np.linspace(-1, 5, 6)
    y = (rng.random(len(X)) < 1 / (1 + np.exp(-(X[:, 0] - 0.2 * X[:, 1] + 1)))).astype(np.int8)
    table = pa.table({**{f"x{j}": X[:, j] for j in range(6)}, "y": y})
    folder = workdir / "data/raw/table"
    folder.mkdir()
    # 70,000 rows in row groups of 30,000: read from the store a row group at a time, cut into the local batches
    for i, (lo, hi) in enumerate([(0, 70000), (70000, 70001), (70001, 75001)]):
        for fs, where in ((None, folder), (s3, "lake/table")):
            pq.write_table(table.slice(lo, hi - lo), f"{where}/part-{i}.parquet", filesystem=fs, row_group_size=30000)
    s3.open_output_stream("lake/table/_SUCCESS").close()  # as Spark leaves it: not a part
    args = ["--set", "prepare.test_size=0.25", "--set", "prepare.standardize=true", "--set", "train.epochs=50"]
    on_ray = ["--set", "cluster.engine=ray", "--set", "cluster.workers=2"]
    local = CliRunner().invoke(main, ["run", "--set", f"prepare.source={folder}", *args, "--out-dir", "local"])
    assert local.exit_code == 0, local.output
    remote = CliRunner().invoke(main, ["run", "--set", "prepare.source=s3://lake/table/", *args, "--out-dir", "s3"])
    assert remote.exit_code == 0, remote.output
    assert "from s3://lake/table/ -> " in remote.output and " in 3 parts " in remote.output
    prepared = {where: workdir / where / "prepared" for where in ("local", "s3")}
    arrays = sorted(p.name for p in prepared["local"].glob("*.npy"))
    assert len(arrays) == 12 and arrays == sorted(p.name for p in prepared["s3"].glob("*.npy"))
    for name in arrays:
        assert (prepared["s3"] / name).read_bytes() == (prepared["local"] / name).read_bytes(), name
    manifest = json.loads((prepared["s3"] / "meta.json").read_text())
    assert [p["source"] for p in manifest["parts"]] == [f"s3://lake/table/part-{i}.parquet" for i in range(3)]
    metrics = {where: json.loads((workdir / where / "evaluate.json").read_text()) for where in ("local", "s3")}
    assert metrics["s3"] == metrics["local"]
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run_id = json.loads((workdir / "s3" / "mlflow_run.json").read_text())["run_id"]
    (dataset, *_) = [d.dataset for d in client.get_run(run_id).inputs.dataset_inputs]
    assert dataset.source_type == "s3" and json.loads(dataset.source)["uri"] == "s3://lake/table/"

    # Scored from the store on Ray, a task per file: the rows and probabilities of the local folder's, in order.
    version = json.loads((workdir / "s3" / "registered.json").read_text())["version"]
    model = ["--model", f"models:/BinaryClassifier/{version}"]
    assert "scored 75001 rows" in invoke("predict", *model, "--input", str(folder), "--output", "local.parquet").output
    scored = invoke("predict", *model, *on_ray, "--input", "s3://lake/*/part-*.parquet", "--output", "s3.parquet")
    assert "scored 75001 rows" in scored.output and "on Ray (2 tasks at a time)" in scored.output
    assert pq.read_table("s3.parquet").equals(pq.read_table("local.parquet"))

    for source, words in [
        ("s3://lake/missing/", "s3://lake/missing/: not found\n"),
        ("s3://lake/table/*.csv", "s3://lake/table/*.csv: no .parquet file in this folder or glob\n"),
        ("s3://lakes/table/", "s3://lakes/table/: not found: there is no bucket 'lakes' at s3://"),  # a typo
        ("s3://lakes/*/part-*.parquet", "in this folder or glob: there is no bucket 'lakes' at s3://"),
    ]:
        before = (prepared["s3"] / "meta.json").read_bytes()
        command = ["prepare", "--set", f"prepare.source={source}", "--prepared", "s3/prepared"]
        refused = CliRunner().invoke(main, command)
        assert refused.exit_code == 1 and words in refused.output, refused.output
        assert (prepared["s3"] / "meta.json").read_bytes() == before
    s3.open_output_stream("lake/rows.csv").close()
    refused = CliRunner().invoke(main, ["predict", *model, "--input", "s3://lake/rows.csv", "--output", "o.parquet"])
    assert refused.exit_code == 1 and "a CSV must be a local file" in refused.output, refused.output
    refused = CliRunner().invoke(main, ["predict", *model, "--input", str(folder), "--output", "s3://lake/o.parquet"])
    assert refused.exit_code == 2 and "must be a local file (object stores are read, not written)" in refused.output
    assert not Path("s3:").exists()
    away = "s3://lake/table/?endpoint_override=127.0.0.1:1&scheme=http"  # nothing listens there
    refused = CliRunner().invoke(main, ["predict", *model, "--input", away, "--output", "o.parquet"])
    assert refused.exit_code == 1 and f"{away}: cannot read: " in refused.output, refused.output
    assert "Could not connect" in refused.output and not Path("o.parquet").exists()
