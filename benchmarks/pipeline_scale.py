"""The whole pipeline against the plain script a user would write instead, side by side on one Parquet file.

Writes one seeded Parquet table (float32 features x1..xF, int8 label y; the prepare stage's synthetic model),
then runs, each from a clean state and one after the other:
  (a) this pipeline in a fresh copy of the project: `dvc repro` (prepare.source = the file, test_size 0.2,
      standardize true, train.optimizer lbfgs; new MLflow store, empty DVC cache), then
      `python -m pipeline predict` of the registered model over the same file;
  (b) the plain script: pandas read_parquet, a stratified train_test_split, StandardScaler,
      LogisticRegression(lbfgs), predict_proba with roc_auc and log_loss on the test split, the model saved
      with joblib, then the whole file scored to Parquet.
Each side's wall time and peak RSS (its whole process tree summed, sampled every 20 ms) are printed, the
pipeline's per stage (peak RSS against the bound 1.5 x X + 1 GiB), and last `ratio_time: X` and
`ratio_rss: Y` (pipeline / script). `--sweep` runs 1M, 2M, 5M and 10M rows and ends with the largest.

    python benchmarks/pipeline_scale.py --rows 1000000 --features 100 [--sweep] [--json pipeline_scale.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FILES = ["pipeline", "dvc.yaml", "params.yaml", ".dvc/config", ".dvc/plots", ".dvcignore", ".gitignore"]
SWEEP = (1_000_000, 2_000_000, 5_000_000, 10_000_000)
STAGES = ("prepare", "train", "evaluate", "register", "predict")
SEED = 1

SCRIPT = textwrap.dedent(
    """
    import sys

    import joblib
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss, roc_auc_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    table, model_path, out = sys.argv[1:]
    df = pd.read_parquet(table)
    X, y = df.drop(columns="y"), df["y"]
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, stratify=y, random_state=1)
    scaler = StandardScaler().fit(X_train)
    model = LogisticRegression().fit(scaler.transform(X_train), y_train)
    p = model.predict_proba(scaler.transform(X_test))[:, 1]
    print(f"roc_auc {roc_auc_score(y_test, p):.6f} log_loss {log_loss(y_test, p):.6f}")
    joblib.dump((scaler, model), model_path)
    scores = model.predict_proba(scaler.transform(X))[:, 1]
    pd.DataFrame({"probability": scores, "label": (scores >= 0.5).astype("int64")}).to_parquet(out)
    """
)


def write_table(path: Path, rows: int, features: int) -> int:
    """The synthetic source's rows as Parquet, one row group per chunk; returns the float32 size of X."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.sources import synthetic

    source = synthetic(rows, features, SEED, "y")
    writer = None
    for chunk in source.chunks():
        columns = {name: chunk.X[:, j] for j, name in enumerate(source.features)}
        table = pa.table({**columns, "y": chunk.y.astype("int8")})
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()
    return rows * features * 4


class Watch:
    """Run a command, sampling its process tree's summed RSS; per `python -m pipeline <stage>` when it runs one."""

    def __init__(self) -> None:
        self.peak = 0
        self.stages: dict[str, dict[str, float]] = {}

    def run(self, args: list[str], cwd: Path, env: dict[str, str]) -> float:
        """Wall seconds of the command; fails loudly with its output."""
        import psutil

        started = time.perf_counter()
        log = tempfile.TemporaryFile()  # a file, not a pipe: a full pipe would stall the command
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                rss = sum(p.memory_info().rss for p in tree)
                stage = next((s for p in tree for s in [_stage_of(p)] if s), None)
            except psutil.Error:
                continue
            self.peak = max(self.peak, rss)
            if stage:
                now = time.perf_counter()
                seen = self.stages.setdefault(stage, {"first": now, "last": now, "peak_rss": 0})
                seen["last"], seen["peak_rss"] = now, max(seen["peak_rss"], rss)
            time.sleep(0.02)
        if proc.returncode != 0:
            log.seek(0)
            sys.exit(f"{' '.join(args)} failed:\n{log.read().decode()[-4000:]}")
        return time.perf_counter() - started


def _stage_of(process) -> str | None:
    """The stage a `python -m pipeline <stage>` process runs (None for anything else)."""
    cmd = process.cmdline()
    if len(cmd) > 3 and cmd[1:3] == ["-m", "pipeline"] and cmd[3] in STAGES:
        return cmd[3]
    return None


def clean_env() -> dict[str, str]:
    """This venv first on PATH, no MLflow or DVC settings from the caller's shell."""
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="b")
    env.update(GIT_AUTHOR_EMAIL="b@b", GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@b")
    return env


def pipeline_side(table: Path, tmp: Path) -> dict:
    """dvc repro in a fresh copy of the project on the table, then pipeline predict over it."""
    import yaml

    root = tmp / "project"
    for name in FILES:
        src, dst = REPO / name, root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    (root / "data" / "raw").mkdir(parents=True)
    os.link(table, root / "data" / "raw" / table.name)  # the same bytes as the script reads, not a copy
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["prepare"].update(source=f"data/raw/{table.name}", test_size=0.2, standardize=True)
    params["train"]["optimizer"] = "lbfgs"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = clean_env()
    bin_dir = Path(sys.executable).parent
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "b"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    watch = Watch()
    repro = watch.run([str(bin_dir / "dvc"), "repro"], root, env)
    name = params["register"]["model_name"]
    args = [sys.executable, "-m", "pipeline", "predict", "--model", f"models:/{name}@challenger"]
    predict = watch.run([*args, "--input", str(table), "--output", str(tmp / "scored.parquet")], root, env)
    stages = {s: {"s": v["last"] - v["first"], "peak_rss": v["peak_rss"]} for s, v in watch.stages.items()}
    metrics = json.loads((root / "metrics" / "evaluate.json").read_text())
    return {"repro_s": repro, "predict_s": predict, "s": repro + predict, "peak_rss": watch.peak, "stages": stages,
            "metrics": metrics}  # fmt: skip


def script_side(table: Path, tmp: Path) -> dict:
    """The plain script, in its own process."""
    script = tmp / "plain.py"
    script.write_text(SCRIPT)
    watch = Watch()
    args = [sys.executable, str(script), str(table), str(tmp / "model.joblib"), str(tmp / "script.parquet")]
    seconds = watch.run(args, tmp, clean_env())
    return {"s": seconds, "peak_rss": watch.peak}


def one_size(rows: int, features: int) -> dict:
    """Both sides on a fresh table of rows x features."""
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        table = tmp / "table.parquet"
        x_bytes = write_table(table, rows, features)
        ours = pipeline_side(table, tmp)
        shutil.rmtree(tmp / "project")  # its DVC cache and prepared arrays: the script gets the same free disk
        script = script_side(table, tmp)
    bound = 1.5 * x_bytes + 2**30
    mib = 2**20
    print(f"\n{rows:,} x {features} (X = {x_bytes / mib:,.0f} MiB float32; stage bound 1.5 X + 1 GiB = "
          f"{bound / mib:,.0f} MiB)")  # fmt: skip
    for stage in STAGES:
        seen = ours["stages"].get(stage)
        if seen:
            flag = "ok" if seen["peak_rss"] <= bound else "OVER"
            print(f"  {stage:<9} {seen['s']:7.1f} s  peak RSS {seen['peak_rss'] / mib:7,.0f} MiB  {flag}")
    auc = ours["metrics"]["model"]["roc_auc"], ours["metrics"]["baseline"]["roc_auc"]
    print(f"  pipeline  {ours['s']:7.1f} s  peak RSS {ours['peak_rss'] / mib:7,.0f} MiB  "
          f"(dvc repro {ours['repro_s']:.1f} s + predict {ours['predict_s']:.1f} s; test roc_auc {auc[0]:.6f}, "
          f"baseline {auc[1]:.6f})")  # fmt: skip
    print(f"  script    {script['s']:7.1f} s  peak RSS {script['peak_rss'] / mib:7,.0f} MiB")
    ratio_time, ratio_rss = ours["s"] / script["s"], ours["peak_rss"] / script["peak_rss"]
    print(f"  ratio     {ratio_time:7.3f} time, {ratio_rss:.3f} peak RSS")
    return {"rows": rows, "features": features, "x_bytes": x_bytes, "pipeline": ours, "script": script,
            "ratio_time": ratio_time, "ratio_rss": ratio_rss}  # fmt: skip


def main() -> None:
    """One size, or the sweep; JSON of every figure; the ratios of the last size printed last."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=100)
    parser.add_argument("--sweep", action="store_true", help="1M, 2M, 5M and 10M rows")
    parser.add_argument("--json", type=Path, default=Path("pipeline_scale.json"))
    opts = parser.parse_args()
    results = [one_size(rows, opts.features) for rows in (SWEEP if opts.sweep else (opts.rows,))]
    opts.json.write_text(json.dumps(results, indent=2) + "\n")
    if len(results) > 1:
        print("\nrows         pipeline s   script s   ratio_time   ratio_rss")
        for r in results:
            print(f"{r['rows']:>10,}   {r['pipeline']['s']:10.1f}   {r['script']['s']:8.1f}   "
                  f"{r['ratio_time']:10.3f}   {r['ratio_rss']:9.3f}")  # fmt: skip
    print(f"wrote {opts.json}")
    print(f"ratio_time: {results[-1]['ratio_time']:.3f}")
    print(f"ratio_rss: {results[-1]['ratio_rss']:.3f}")


if __name__ == "__main__":
    main()
