"""End to end in a temp git repo: real `dvc repro`, `dvc exp run`, `mlflow run`, registry loads."""

import csv
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml
from mlflow import MlflowClient

from pipeline.params import flatten
from tests.conftest import REPO, dvc, dvc_command, free_port, run_env, sh

TUTORIAL_PROBA = [2.7616e-04, 3.1595e-02, 3.8959e-02, 9.5624e-01, 9.9823e-01, 9.9969e-01]
LOAD_CHAMPION = """
import json, sys
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model("models:/BinaryClassifier@champion")
rows = pd.DataFrame([[1, 2], [2, 3], [3, 1], [4, 3], [5, 3], [6, 2]], columns=["x1", "x2"], dtype="float64")
out = model.predict(rows)
print(json.dumps({"p": out["probability"].tolist(), "label": out["label"].tolist()}))
"""


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except requests.RequestException:
        return False


def assert_up_to_date(project: Path) -> None:
    """`dvc status`: nothing to run but the tracking stage, which DVC checks on every repro (always_changed)."""
    assert json.loads(dvc(project, "status", "--json").stdout) == {"tracking": ["always changed"]}


def test_dvc_repro_end_to_end(project, tmp_path):
    out = dvc(project, "repro").stdout
    assert "Epoch 1000/1000 Cost: 0.019843 Accuracy 100.00%" in out
    assert "W = [[3.2534, 1.5181]], b = [-14.4839]" in out
    uri = f"sqlite:///{project / 'mlflow.db'}"  # the default store, anchored on the repo root
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.get_experiment_by_name("binary-classifier")
    assert exp.artifact_location == (project / "mlartifacts").as_uri()
    found = {r.data.tags["pipeline.family"]: r for r in client.search_runs([exp.experiment_id])}
    assert set(found) == {"execution", "model", "baseline"}
    commit = sh(["git", "rev-parse", "HEAD"], project, run_env()).stdout.strip()
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    prepared_md5 = next(o["md5"] for o in lock["prepare"]["outs"] if o["path"] == "data/prepared")
    for run in found.values():
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.source.git.commit"] == commit
        assert run.data.tags["pipeline.git.dirty"] == "false" and run.info.run_name.endswith(commit[:7])
        assert run.data.tags["dvc.md5.data/prepared"] == prepared_md5  # the hash dvc.lock holds for the input
        assert run.data.tags["mlflow.user"] and run.data.tags["mlflow.source.name"].startswith("dvc.yaml:")
        assert run.data.tags["pipeline.version.torch"].startswith("2.13.0")
    assert len(client.get_metric_history(found["model"].info.run_id, "cost")) == 1001
    registered = json.loads((project / "models/registered.json").read_text())
    assert registered["version"] == 1 and set(registered["aliases"]) == {"champion", "challenger"}
    assert registered["run_id"] == found["model"].info.run_id

    # Outputs DVC knows about.
    metrics = dvc(project, "metrics", "show", "--json").stdout
    assert '"roc_auc"' in metrics
    plots = dvc(project, "plots", "show", "-o", str(tmp_path / "plots")).stdout
    page = (tmp_path / "plots" / "index.html").read_text()
    assert "cdn.jsdelivr" not in page and "vegaEmbed" in page, plots  # vega inline: renders offline
    for name in ("cost", "accuracy", "roc", "precision_recall", "calibration", "confusion"):
        assert f'"{name}' in page or name in page

    # `make ui`: MLflow's UI on this store, announced with the address of the training runs' view.
    port = free_port()
    ui = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "ui", "--port", str(port)], cwd=project, env=run_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        announced = ui.stderr.readline().strip()
        expected = f"http://127.0.0.1:{port}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
        assert announced.endswith(expected), announced
        deadline = time.monotonic() + 60
        while not _answers(f"http://127.0.0.1:{port}/health"):
            assert ui.poll() is None and time.monotonic() < deadline, ui.stderr.read()
            time.sleep(0.3)
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).ok
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)

    # Nothing changed: nothing runs but the check of which store the runs go to.
    again = dvc(project, "repro").stdout
    assert re.findall(r"Running stage '(\w+)'", again) == ["tracking"] and "'train' didn't change" in again

    # The champion loads in a fresh process, from the registry, and predicts the tutorial.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = sh([sys.executable, "-c", LOAD_CHAMPION], elsewhere, run_env(MLFLOW_TRACKING_URI=uri))
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [float(f"{p:.4e}") for p in answer["p"]] == TUTORIAL_PROBA
    assert answer["label"] == [0, 0, 0, 1, 1, 1]

    # Re-running every stage with the same inputs makes no new version.
    dvc(project, "repro", "--force")
    assert len(client.search_model_versions("name = 'BinaryClassifier'")) == 1

    # An experiment in a temp workspace logs into the same store at the repo root.
    dvc(project, "exp", "run", "--temp", "-S", "train.epochs=200")
    epochs = [r.data.params.get("train.epochs") for r in client.search_runs([exp.experiment_id])]
    assert "200" in epochs
    assert not list((project / ".dvc" / "tmp").rglob("mlflow.db"))


def test_mlflow_run_is_the_parent_and_leaves_dvc_outputs_alone(project):
    env = run_env(MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlflow.db'}")
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    dvc(project, "repro")
    proc = sh(
        [mlflow_bin, "run", ".", "--env-manager", "local", "--experiment-name", "binary-classifier", "-P", "lr=0.5"],
        project,
        env,
    )
    run_id = re.search(r"=== Run \(ID '([0-9a-f]+)'\) succeeded ===", proc.stdout + proc.stderr).group(1)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["pipeline.family"] == "execution"
    assert run.data.params["train.lr"] == "0.5" and run.data.params["train.epochs"] == "1000"  # from params.yaml
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    assert {c.data.tags["pipeline.family"] for c in children} == {"model", "baseline"}
    model = next(c for c in children if c.data.tags["pipeline.family"] == "model")
    assert "eval_roc_auc" in model.data.metrics and len(client.get_metric_history(model.info.run_id, "cost")) == 1001
    assert json.loads((project / ".mlproject/mlflow_run.json").read_text())["parent_run_id"] == run_id
    assert_up_to_date(project)  # DVC's outputs untouched

    # Without --experiment-name MLflow puts its run in Default: the pipeline says so and how to fix it.
    proc = sh([mlflow_bin, "run", ".", "--env-manager", "local", "-P", "epochs=10"], project, env)
    assert "--experiment-name binary-classifier" in proc.stderr


def test_mlflow_run_rejects_a_mistyped_parameter(project):
    env = run_env(MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlflow.db'}")
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    proc = sh([mlflow_bin, "run", ".", "--env-manager", "local", "-P", "epochs=1.5"], project, env, ok=False)
    assert proc.returncode != 0 and "train.epochs: expected int, got float 1.5" in proc.stdout + proc.stderr


def test_mlproject_parameters_default_to_params_yaml():
    mlproject = yaml.safe_load((REPO / "MLproject").read_text())
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (entry,) = mlproject["entry_points"].values()
    pairs = re.findall(r"--set ([\w.]+)=\{(\w+)\}", entry["command"])
    assert {name for _, name in pairs} == set(entry["parameters"]) and len(pairs) >= 10
    for key, name in pairs:
        section, field = key.split(".")
        assert field in params[section], key  # a knob of params.yaml ...
        assert entry["parameters"][name] == {"type": "string", "default": ""}, name  # ... whose value it keeps


def test_queued_sweep_lands_in_dvc_and_in_one_mlflow_store(project):
    dvc(project, "repro")
    sh(["git", "add", "-A"], project, run_env())
    sh(["git", "commit", "-qm", "baseline run"], project, run_env())
    # A fresh clone, its own new store: `dvc repro` gives the committed records byte for byte, and no
    # record of a store (run ids, versions) is in git.
    clone = project.parent / "clone"
    sh(["git", "clone", "-q", str(project), str(clone)], project.parent, run_env())
    for _ in ("a new clone", "the same clone, its store deleted"):
        ran = dvc(clone, "repro").stdout  # every stage that records into the store runs in the new one
        assert re.findall(r"Running stage '(\w+)'", ran)[-3:] == ["train", "evaluate", "register"], ran
        assert sh(["git", "status", "--porcelain"], clone, run_env()).stdout == ""
        sh([sys.executable, "-m", "pipeline", "report"], clone, run_env())
        uri = f"sqlite:///{clone / 'mlflow.db'}"
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("binary-classifier").experiment_id])
        families = [r.data.tags["pipeline.family"] for r in runs]
        assert sorted(families) == ["baseline", "execution", "model"]
        (clone / "mlflow.db").unlink()
        shutil.rmtree(clone / "mlartifacts")
    for lr in ("0.5", "0.25"):
        dvc(project, "exp", "run", "--queue", "-S", f"train.lr={lr}")
    dvc(project, "exp", "run", "--run-all")

    shown = json.loads(dvc(project, "exp", "show", "--json").stdout)
    exps = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            (rev,) = exp["revs"]
            params = rev["data"]["params"]["params.yaml"]["data"]
            exps[exp["name"]] = (params["train"]["lr"], rev["data"]["metrics"]["metrics/evaluate.json"]["data"])
    assert sorted(lr for lr, _ in exps.values()) == [0.25, 0.5]

    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    exp_id = client.get_experiment_by_name("binary-classifier").experiment_id
    for name, (lr, metrics) in exps.items():
        query = f"tags.`dvc.exp_name` = '{name}' and tags.`pipeline.family` = 'execution'"
        (parent,) = client.search_runs([exp_id], query)
        assert parent.info.run_name == f"{name} · train.lr={lr}" and parent.info.status == "FINISHED"
        children = client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        by_family = {c.data.tags["pipeline.family"]: c for c in children}
        assert set(by_family) == {"model", "baseline"}
        for family, run in by_family.items():
            assert run.info.run_name.endswith(f"{name} · train.lr={lr}")
            assert run.data.tags["dvc.exp_baseline_rev"] == parent.data.tags["dvc.exp_baseline_rev"]
            for key, value in metrics[family].items():  # the same numbers in DVC and in MLflow
                assert run.data.metrics[f"eval_{key}"] == pytest.approx(value, rel=1e-12)
    # Both sweep points tie with the champion on roc_auc: it stays the first model.
    assert str(client.get_model_version_by_alias("BinaryClassifier", "champion").version) == "1"

    # `dvc exp show` lists params.yaml's knobs (no paths, no serving settings) and the metrics; with
    # --only-changed, what the sweep changed and the numbers it moved.
    header = dvc(project, "exp", "show", "--csv").stdout.splitlines()[0].split(",")
    knobs = set(flatten(yaml.safe_load((project / "params.yaml").read_text())))
    assert knobs <= set(header) and not [h for h in header if h.startswith(("paths.", "serve."))]
    changed = dvc(project, "exp", "show", "--only-changed", "--csv").stdout.splitlines()[0].split(",")
    assert "train.lr" in changed and "model.log_loss" in changed and len(changed) <= 20, changed
    # HEAD's plots are in git: `dvc plots diff HEAD` loads them beside the workspace's.
    assert "errors" not in json.loads(dvc(project, "plots", "diff", "HEAD", "--json").stdout)

    # The plots' files hold every field dvc.yaml declares for them.
    for entry in yaml.safe_load((project / "dvc.yaml").read_text())["plots"]:
        ((_, plot),) = entry.items()
        for file, fields in plot["y"].items():
            path = project / file.replace("${paths.history}", "models/history.csv").replace("${paths.plots}", "plots")
            rows = list(csv.DictReader(path.open())) if path.suffix == ".csv" else json.loads(path.read_text())
            declared = [fields] if isinstance(fields, str) else fields
            assert set(declared) | {plot["x"]} <= set(rows[0]), (file, declared)

    # The report: self-contained HTML (figures inline, nothing fetched) and Markdown for a CI comment.
    out = sh([sys.executable, "-m", "pipeline", "report"], project, run_env()).stdout
    assert "report: file://" in out
    page = (project / "reports/report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and not re.search(r"(src|href)=['\"]https?:", page)
    assert "champion" in page and "baseline" in page and "The gate's decision" in page
    markdown = (project / "reports/report.md").read_text()
    assert "| metric |" in markdown and "![ROC](figures/roc.png)" in markdown
    assert (project / "reports/figures/roc.png").read_bytes().startswith(b"\x89PNG")


# Runs a command and prints, last, the peak RSS in KiB of the largest process of its tree (the stages and their
# children are waited for, so RUSAGE_CHILDREN covers every one of them, and nothing of the test's own).
PEAK_RSS = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def with_peak_rss(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[str, int]:
    """A command's output and the peak RSS in bytes of the largest process it ran."""
    out = sh([sys.executable, "-c", PEAK_RSS, *args], cwd, env).stdout
    head, _, peak = out.rstrip().rpartition("\n")
    return head, int(peak) * 1024


def test_prepare_names_a_source_dvc_cannot_see_change_and_the_fix_works(project, tmp_path):
    """A source outside prepare's deps is warned of, with the fix; declared as a dep, its change reruns prepare."""
    assert "Warning" not in dvc(project, "repro", "prepare").stderr  # the tutorial, under data/raw
    outside = tmp_path / "elsewhere.csv"
    shutil.copy(project / "data" / "raw" / "tutorial.csv", outside)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["prepare"]["source"] = str(outside)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    warned = dvc(project, "repro", "prepare").stderr
    assert f"Warning: prepare.source {outside}: {outside} lies outside every dep of stage prepare in dvc.yaml" in warned
    assert "put the data under data/raw, or add it to the stage's deps" in warned
    (project / "data" / "raw" / "link.csv").symlink_to(outside)  # under data/raw: DVC hashes what it points to
    params["prepare"]["source"] = "data/raw/link.csv"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "Warning" not in dvc(project, "repro", "prepare").stderr
    params["prepare"]["source"] = str(outside)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    raw = "      - ${paths.raw}\n"
    stages = (project / "dvc.yaml").read_text()
    (project / "dvc.yaml").write_text(stages.replace(raw, f"{raw}      - {outside}\n", 1))  # prepare's deps
    assert "Warning" not in dvc(project, "repro", "prepare").stderr
    with outside.open("a") as fh:
        fh.write("7,1,1\n")
    assert "Running stage 'prepare'" in dvc(project, "repro", "prepare").stdout  # DVC saw the change
    assert json.loads((project / "data" / "prepared" / "meta.json").read_text())["n_train"] == 7


def test_a_parquet_table_through_every_stage_then_batch_scoring(project, tmp_path):
    """benchmarks/pipeline_scale.py's pipeline side at a size CI affords, checked instead of timed.

    A Parquet table (several row groups) split, standardised and fitted with L-BFGS at scikit-learn's C, then
    scored whole by `pipeline predict`: the model matches the baseline, the scored file gives the test rows the
    metrics evaluate reported, and every process stays within the bound of issue 9 (1.5 x X + 1 GiB).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.metrics import log_loss, roc_auc_score

    from pipeline.preparation import test_rows
    from pipeline.sources import synthetic

    rows, features = 300_000, 20
    table = project / "data" / "raw" / "table.parquet"
    source = synthetic(rows, features, 1, "y")
    with pq.ParquetWriter(table, pa.schema([*((f, pa.float32()) for f in source.features), ("y", pa.int8())])) as w:
        for chunk in source.chunks():
            columns = {name: chunk.X[:, j] for j, name in enumerate(source.features)}
            w.write_table(pa.table({**columns, "y": chunk.y.astype("int8")}))  # a row group per chunk: 5 in all
    (project / "data" / "raw" / "tutorial.csv").unlink()
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["prepare"].update(source="data/raw/table.parquet", test_size=0.2, standardize=True)
    params["train"].update(optimizer="lbfgs", C=params["evaluate"]["baseline"]["C"])
    params["register"]["model_name"] = "Synthetic"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    bound = 1.5 * rows * features * 4 + 2**30

    cmd, env = dvc_command(project, "repro")
    _, repro_peak = with_peak_rss(cmd, project, env)
    metrics = json.loads((project / "metrics/evaluate.json").read_text())
    for name in ("roc_auc", "log_loss", "accuracy"):  # the same objective on the same arrays: the same optimum
        assert metrics["model"][name] == pytest.approx(metrics["baseline"][name], abs=1e-3), name
    assert json.loads((project / "models/registered.json").read_text())["version"] == 1

    scored = tmp_path / "scored.parquet"
    predict = ["predict", "--model", "models:/Synthetic@champion", "--input", str(table), "--output", str(scored)]
    out, predict_peak = with_peak_rss([sys.executable, "-m", "pipeline", *predict], project, run_env())
    assert f"scored {rows} rows" in out
    p = pq.read_table(scored).column("probability").to_numpy()
    y = pq.read_table(table, columns=["y"]).column("y").to_numpy().astype(np.float32)
    test = test_rows(0, y.size, params["prepare"]["test_size"], params["prepare"]["seed"])  # evaluate's rows
    # predict standardises the raw rows itself, prepare wrote them standardised: float32 rounding apart, which can
    # order a few near-tied pairs of 300k rows differently
    assert roc_auc_score(y[test], p[test]) == pytest.approx(metrics["model"]["roc_auc"], abs=1e-7)
    assert log_loss(y[test], p[test]) == pytest.approx(metrics["model"]["log_loss"], abs=1e-6)
    assert repro_peak <= bound and predict_peak <= bound, (repro_peak, predict_peak, bound)


def files_state(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_a_copied_checkout_writes_nothing_outside_itself(project, tmp_path):
    dvc(project, "repro")
    copy = tmp_path / "copy"
    shutil.copytree(project, copy, symlinks=True)  # store, artifacts and DVC cache included
    before = files_state(project)
    out = dvc(copy, "repro", "--force").stderr
    assert f"was made in {project}: its artifact locations now point under {copy}" in out
    sh([sys.executable, "-m", "pipeline", "report"], copy, run_env())
    assert files_state(project) == before  # the original folder is exactly as it was
    uri = f"sqlite:///{copy / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    for experiment in client.search_experiments():
        assert Path(experiment.artifact_location.removeprefix("file://")).is_relative_to(copy), experiment
        for run in client.search_runs([experiment.experiment_id]):
            assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(copy), run.info
    # Old and new versions load from the copy: one registered model, its artifacts all under the copy.
    (version,) = client.search_model_versions("name = 'BinaryClassifier'")
    proc = sh([sys.executable, "-c", LOAD_CHAMPION], tmp_path, run_env(MLFLOW_TRACKING_URI=uri))
    assert json.loads(proc.stdout.strip().splitlines()[-1])["label"] == [0, 0, 0, 1, 1, 1]


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="OpenBLAS's x86 kernel names")
def test_the_records_are_the_same_bytes_with_every_blas_kernel(tmp_path, template_store):
    """The tutorial's model, history, metrics and plots, with the BLAS kernels of this CPU and with those of the
    oldest x86-64 CPUs (OpenBLAS Prescott, MKL's compatible path): what another machine's `make run` records."""
    made = {}
    for name, kernels in {"native": {}, "oldest": {"OPENBLAS_CORETYPE": "Prescott", "MKL_CBWR": "COMPATIBLE"}}.items():
        (tmp_path / name).mkdir()
        shutil.copy(template_store, tmp_path / name / "mlflow.db")
        env = run_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / name / 'mlflow.db'}", **kernels)
        sh([sys.executable, "-m", "pipeline", "run", "--out-dir", str(tmp_path / name / "out")], REPO, env)
        out = tmp_path / name / "out"
        files = ["model.pt", "history.csv", "evaluate.json", *(f"plots/{p.name}" for p in (out / "plots").iterdir())]
        made[name] = {f: (out / f).read_bytes() for f in files}
    assert made["native"] == made["oldest"]
