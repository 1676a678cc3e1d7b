"""The whole pipeline against the plain script a user would write instead, side by side on one Parquet file.

Writes one seeded Parquet table (float32 features x1..xF, int8 label y; the prepare stage's synthetic model) in
row groups of --row-group-rows (default: pyarrow's, i.e. what `DataFrame.to_parquet` writes), then runs, each
from a clean state, --repeats times in turn, in alternating order (pipeline first, then script first, ...):
  (a) this pipeline in a fresh copy of the project: `dvc repro` (prepare.source = the file, test_size 0.2,
      standardize true, train.optimizer lbfgs; new MLflow store, empty DVC cache), then
      `python -m pipeline predict` of the registered model over the same file;
  (b) the plain script: pandas read_parquet, a stratified train_test_split, StandardScaler,
      LogisticRegression(lbfgs), predict_proba with roc_auc and log_loss on the test split, the model saved
      with joblib, then the whole file scored to Parquet;
  (c) the same script with the pipeline's memory settings (pipeline.__main__.MEMORY_ENV): no transparent huge
      pages for numpy's arrays, pyarrow's jemalloc pool. Not the goal's reference (a user's script has neither),
      but it shows how much of the ratio is those settings and how much is the pipeline's own work.
Each run's wall time and peak RSS (its whole process tree's PSS summed, sampled every 20 ms) are printed, and each
side's median run in full: the pipeline's per stage (peak RSS against the bound 1.5 x X + 1 GiB). Then
`pipeline prepare` of the file (and of a CSV of its first --csv-rows rows) against a process that only reads it
with pyarrow (--repeats runs each, interleaved; medians), and last `ratio_time_same_memory: X` (the pipeline's
median run / (c)'s), `ratio_time: X` and `ratio_rss: Y` (the pipeline's median run / the script's). A script
that fails (at 10M x 100 on a 24 GiB machine the OOM killer may stop it) is reported with its time and peak RSS,
and that size's ratios are n/a.
`--sweep` runs 1M, 2M, 5M and 10M rows, ends with the largest, and fits each side's median times to
fixed seconds + seconds per million rows.

Two things on the 2-core VM here move single runs by a third, which is why the medians are compared. Its host
backs guest memory on first touch, and the balloon driver reports free 2 MiB blocks back to it within seconds
(page_reporting_order 9), after which they are fresh again. Memory the guest takes in 2 MiB blocks is what costs:
a transparent huge page (numpy madvises its large arrays for them, pyarrow's mimalloc pool gets them), or a large
folio of page cache, which the kernel sizes by the write (a file written 16 MiB at a time). 1 GiB touched that way
took 4-6 s of system time; in 4 KiB pages, or written 256 KiB at a time, 0.2-0.5 s. So a side's time is largely
the memory it touches in 2 MiB blocks: the script's arrays, and the pipeline's before MEMORY_ENV and
pipeline.files.WRITE_BYTES. And the guest runs DAMON reclaim (kdamond, configured under
/sys/kernel/mm/damon/admin): file pages no process maps that have gone unread for a minute (12 aggregations of
5 s) are dropped, up to 128 MiB/s, so a library or the table left cold between two steps is read from disk again.
Before each run, untimed, the libraries either side uses are imported and the table is read (warm_caches), and
then nothing runs for SETTLE_S: memory freed just before a run (by the warm-up, or by the other side's run) is
still backed for about 2 s, and a run that started on it got that much memory at a tenth of the cost (4 GiB
touched again at once: 7.1 GiB/s; 2 s later: 0.9; 5 s later: 0.55).

The row groups matter to the script: pandas read the same 5M x 100 table in 2.8-3.5 s from 1Mi-row groups and
in 6.7-11.6 s from 64Ki-row groups (this benchmark's layout before), while the pipeline reads either at the same
speed, so small row groups flattered the pipeline.

    python benchmarks/pipeline_scale.py --rows 1000000 --features 100 [--sweep] [--csv-rows N] [--repeats N]
                                        [--row-group-rows N] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from common import STAGES, Watch, clean_env, project_copy, stage_of

from pipeline.__main__ import MEMORY_ENV

SWEEP = (1_000_000, 2_000_000, 5_000_000, 10_000_000)
SEED = 1
ROW_GROUP_ROWS = 1 << 20  # pyarrow's default row group, so what pandas' DataFrame.to_parquet writes
SETTLE_S = 8  # before each timed run: memory freed by the run before is fresh again 2 s on (see the note above)

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


def write_table(path: Path, rows: int, features: int, group_rows: int, files: int = 1) -> int:
    """The synthetic source's rows as Parquet in row groups of group_rows; returns the float32 size of X.

    files > 1: `path` is a folder of that many files (part-00000.parquet, ...) of consecutive rows, as a
    partitioned dataset is written.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.sources import synthetic

    source = synthetic(rows, features, SEED, "y")
    bounds = [rows * i // files for i in range(1, files + 1)]
    if files > 1:
        path.mkdir(parents=True)
    writer, pending, written, file = None, [], 0, 0

    def flush() -> None:
        nonlocal writer, written, file
        table = pa.concat_tables(pending)
        pending.clear()
        while table.num_rows:
            if writer is None:
                writer = pq.ParquetWriter(path / f"part-{file:05d}.parquet" if files > 1 else path, table.schema)
            head = table.slice(0, bounds[file] - written)
            writer.write_table(head, row_group_size=group_rows)
            written, table = written + head.num_rows, table.slice(head.num_rows)
            if written == bounds[file]:
                writer.close()
                writer, file = None, file + 1

    for chunk in source.chunks():
        columns = {name: chunk.X[:, j] for j, name in enumerate(source.features)}
        pending.append(pa.table({**columns, "y": chunk.y.astype("int8")}))
        if sum(len(t) for t in pending) >= group_rows:
            flush()
    if pending:
        flush()
    return rows * features * 4


def bench_project(table: Path, root: Path) -> Path:
    """A fresh copy of the project at root on the table (linked into data/raw), with this benchmark's params."""
    import yaml

    def on_the_table(root: Path) -> None:
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["prepare"].update(source=f"data/raw/{table.name}", test_size=0.2, standardize=True)
        params["train"]["optimizer"] = "lbfgs"
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    project_copy(root, edit=on_the_table)
    (root / "data" / "raw").mkdir(parents=True)
    # after the commit: a data file is DVC's to hash, not git's; linked, so the same bytes as the script reads
    os.link(table, root / "data" / "raw" / table.name)
    return root


def pipeline_side(table: Path, tmp: Path) -> dict:
    """dvc repro in a fresh copy of the project on the table, then pipeline predict over it; the copy removed."""
    import yaml

    root = bench_project(table, tmp / "project")
    env, bin_dir = clean_env(), Path(sys.executable).parent
    watch = Watch(stage_of)
    repro = watch.check([str(bin_dir / "dvc"), "repro"], root, env)
    name = yaml.safe_load((root / "params.yaml").read_text())["register"]["model_name"]
    args = [sys.executable, "-m", "pipeline", "predict", "--model", f"models:/{name}@challenger"]
    predict = watch.check([*args, "--input", str(table), "--output", str(tmp / "scored.parquet")], root, env)
    stages = {s: {"s": v["last"] - v["first"], "peak_rss": v["peak_rss"]} for s, v in watch.named.items()}
    metrics = json.loads((root / "metrics" / "evaluate.json").read_text())
    shutil.rmtree(root)  # its DVC cache and prepared arrays: the next run starts on the same free disk
    (tmp / "scored.parquet").unlink()
    return {"repro_s": repro, "predict_s": predict, "s": repro + predict, "peak_rss": watch.peak, "stages": stages,
            "metrics": metrics}  # fmt: skip


def script_side(table: Path, tmp: Path, env: dict[str, str] | None = None) -> dict:
    """The plain script, in its own process; a failure (out of memory at 10M on 24 GiB) is reported, not fatal."""
    script = tmp / "plain.py"
    script.write_text(SCRIPT)
    watch = Watch()
    args = [sys.executable, str(script), str(table), str(tmp / "model.joblib"), str(tmp / "script.parquet")]
    seconds, status, tail = watch.run(args, tmp, {**clean_env(), **(env or {})})
    failed = None if status == 0 else f"exit {status}: {tail.strip().splitlines()[-1] if tail.strip() else ''}"
    for name in ("model.joblib", "script.parquet"):
        (tmp / name).unlink(missing_ok=True)
    return {"s": seconds, "peak_rss": watch.peak, "failed": failed}


def prepare_against_pyarrow(source: Path, root: Path, repeats: int) -> dict:
    """`pipeline prepare` of a file (as the benchmark's params) against a process that only reads it with pyarrow.

    Each is timed `repeats` times, in turn and in alternating order (pyarrow first, then prepare first, ...),
    each run SETTLE_S after the one before; the medians are compared. Run at once, whichever ran on the memory
    the run before had just freed (see the module's note) took half the time of the other, either way round.
    """
    read = "pq.read_table" if source.suffix == ".parquet" else "pacsv.read_csv"
    code = f"import pyarrow.csv as pacsv, pyarrow.parquet as pq; {read}({str(source)!r})"
    env, watch, out = clean_env(), Watch(), root / "prepared_again"
    prepare = ["prepare", "--prepared", str(out), "--set", f"prepare.source={source}"]
    commands = {"pyarrow": [sys.executable, "-c", code], "prepare": [sys.executable, "-m", "pipeline", *prepare]}
    runs: dict[str, list[float]] = {side: [] for side in commands}
    for i in range(repeats):
        for side in ("pyarrow", "prepare") if i % 2 == 0 else ("prepare", "pyarrow"):
            time.sleep(SETTLE_S)
            runs[side].append(watch.check(commands[side], root, env))
            if side == "prepare":
                out_bytes = sum(f.stat().st_size for f in out.glob("X_*.npy"))
                shutil.rmtree(out)
    prepare_s, pyarrow_s = statistics.median(runs["prepare"]), statistics.median(runs["pyarrow"])
    return {"file": source.name, "prepare_s": prepare_s, "pyarrow_s": pyarrow_s, "x_bytes": out_bytes,
            "gb_per_s": out_bytes / prepare_s / 1e9, "ratio": prepare_s / pyarrow_s, "runs": runs}  # fmt: skip


def csv_copy(table: Path, rows: int) -> Path:
    """The first `rows` rows of the table as a CSV beside it (pyarrow's writer)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = table.with_name(f"{table.stem}_{rows}.csv")
    with pacsv.CSVWriter(path, pq.ParquetFile(table).schema_arrow) as writer:
        for batch in pq.ParquetFile(table).iter_batches(batch_size=1 << 16):
            writer.write_batch(batch.slice(0, rows))
            rows -= min(rows, len(batch))
            if not rows:
                break
    return path


def warm_caches(table: Path) -> None:
    """Import what either side imports and read the table, untimed, so neither side reads them from disk."""
    # Cold (a big table's page cache, or DAMON after a minute unread), they cost a 17 s train stage at 1M right
    # after a 10M run against 5 s. Named one by one: the stages import more than `import torch` or `import mlflow`
    # does (torch.optim's first use imports torch._dynamo, evaluate draws with matplotlib, each stage opens the
    # sqlite store), and with those left out only the script's imports were all warm.
    modules = [
        "dvc.repo", "joblib", "matplotlib.backends.backend_agg", "matplotlib.figure", "mlflow.pyfunc",
        "mlflow.store.model_registry.sqlalchemy_store", "mlflow.store.tracking.sqlalchemy_store", "pandas",
        "pyarrow.csv", "pyarrow.parquet", "sklearn.linear_model", "sklearn.metrics", "sklearn.model_selection",
        "sklearn.preprocessing", "torch", "torch._dynamo",
    ]  # fmt: skip
    code = f"import {', '.join(modules)}"
    subprocess.run([sys.executable, "-c", code], check=True, env=clean_env())
    # The table too: each side reads it first (DVC's md5 of it, pandas' read). Left to the order of the runs, a
    # run after the script (which reads it only at its start) met a table DAMON had begun to drop, a run after
    # the pipeline (whose predict reads it last) a warm one: two runs in five on each side read it from disk.
    buffer = bytearray(1 << 24)
    with table.open("rb", buffering=0) as fh:
        while fh.readinto(buffer):
            pass


def median_run(runs: list[dict]) -> dict:
    """The run of median wall time (the lower middle one of an even count): a real run, reported whole."""
    return sorted(runs, key=lambda r: r["s"])[(len(runs) - 1) // 2]


def all_sides(table: Path, tmp: Path, repeats: int) -> dict[str, list[dict]]:
    """Each side's runs, `repeats` each, in turn and in alternating order; caches warmed before each."""
    sides = {
        "pipeline": pipeline_side,
        "script": script_side,
        "script, same memory": lambda table, tmp: script_side(table, tmp, MEMORY_ENV),
    }
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for i in range(repeats):
        for side in list(sides) if i % 2 == 0 else reversed(sides):
            warm_caches(table)
            time.sleep(SETTLE_S)  # the warm-up's freed memory reported back: neither side starts on it
            runs[side].append(sides[side](table, tmp))
    return runs


def one_size(rows: int, features: int, csv_rows: int, repeats: int, group_rows: int) -> dict:
    """Both sides on a fresh table of rows x features; prepare against pyarrow on it (and on a CSV of csv_rows)."""
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        table = tmp / "table.parquet"
        x_bytes = write_table(table, rows, features, group_rows)
        runs = all_sides(table, tmp, repeats)
        root = bench_project(table, tmp / "project")
        reads = [prepare_against_pyarrow(table, root, repeats)]
        if csv_rows:
            reads.append(prepare_against_pyarrow(csv_copy(table, csv_rows), root, repeats))
    pipeline_runs, script_runs = runs["pipeline"], runs["script"]
    ours, script, same = median_run(pipeline_runs), median_run(script_runs), median_run(runs["script, same memory"])
    failed = next((r["failed"] for r in script_runs if r["failed"]), None)
    bound = 1.5 * x_bytes + 2**30
    mib = 2**20
    print(f"\n{rows:,} x {features} (X = {x_bytes / mib:,.0f} MiB float32; stage bound 1.5 X + 1 GiB = "
          f"{bound / mib:,.0f} MiB; row groups of {group_rows:,} rows)")  # fmt: skip
    for side, side_runs in runs.items():
        shown = ", ".join(f"{r['s']:.1f} s / {r['peak_rss'] / mib:,.0f} MiB{' FAILED' if r.get('failed') else ''}"
                          for r in side_runs)  # fmt: skip
        print(f"  {side} runs: {shown}")
    print("  the median runs:")
    for stage in STAGES:
        seen = ours["stages"].get(stage)
        if seen:
            flag = "ok" if seen["peak_rss"] <= bound else "OVER"
            print(f"  {stage:<9} {seen['s']:7.1f} s  peak RSS {seen['peak_rss'] / mib:7,.0f} MiB  {flag}")
    auc = ours["metrics"]["model"]["roc_auc"], ours["metrics"]["baseline"]["roc_auc"]
    print(f"  pipeline  {ours['s']:7.1f} s  peak RSS {ours['peak_rss'] / mib:7,.0f} MiB  "
          f"(dvc repro {ours['repro_s']:.1f} s + predict {ours['predict_s']:.1f} s; test roc_auc {auc[0]:.6f}, "
          f"baseline {auc[1]:.6f})")  # fmt: skip
    print(f"  script    {script['s']:7.1f} s  peak RSS {script['peak_rss'] / mib:7,.0f} MiB"
          f"{f'  FAILED ({failed})' if failed else ''}")  # fmt: skip
    print(
        f"  script, the pipeline's memory settings ({' '.join(f'{k}={v}' for k, v in MEMORY_ENV.items())}): "
        f"{same['s']:.1f} s, peak RSS {same['peak_rss'] / mib:,.0f} MiB{'  FAILED' if same['failed'] else ''}"
    )
    for r in reads:
        shown = {side: ", ".join(f"{t:.1f}" for t in times) for side, times in r["runs"].items()}
        print(f"  prepare {r['file']}: {r['prepare_s']:.1f} s ({shown['prepare']}), {r['gb_per_s']:.2f} GB/s of "
              f"float32 out; pyarrow reading it {r['pyarrow_s']:.1f} s ({shown['pyarrow']}); ratio of the medians "
              f"{r['ratio']:.2f} (goal: 1 GB/s or <= 1.5)")  # fmt: skip
    ratios = {"ratio_time": None, "ratio_rss": None}
    if not failed:
        ratios = {"ratio_time": ours["s"] / script["s"], "ratio_rss": ours["peak_rss"] / script["peak_rss"]}
        print(f"  ratio     {ratios['ratio_time']:7.3f} time, {ratios['ratio_rss']:.3f} peak RSS")
    ratios["ratio_time_same_memory"] = None if same["failed"] else ours["s"] / same["s"]
    if not same["failed"]:
        print(f"  ratio     {ratios['ratio_time_same_memory']:7.3f} time against the script with the same settings")
    return {"rows": rows, "features": features, "x_bytes": x_bytes, "row_group_rows": group_rows,
            "pipeline": ours, "script": script, "script_same_memory": same, "pipeline_runs": pipeline_runs,
            "script_runs": script_runs, "script_same_memory_runs": runs["script, same memory"],
            "prepare_against_pyarrow": reads, **ratios}  # fmt: skip


def _shown(ratio: float | None) -> str:
    return "n/a (the script failed)" if ratio is None else f"{ratio:.3f}"


def linear_fit(results: list[dict], side: str) -> tuple[float, float] | None:
    """Least squares of a side's median seconds on rows: (fixed seconds, seconds per million rows), if 2+ sizes."""
    import numpy as np

    done = [r for r in results if not r[side].get("failed")]
    if len(done) < 2:
        return None
    millions = np.array([r["rows"] / 1e6 for r in done])
    slope, fixed = np.polyfit(millions, [r[side]["s"] for r in done], 1)
    return float(fixed), float(slope)


def main() -> None:
    """One size, or the sweep; JSON of every figure; the ratios of the last size printed last."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=100)
    parser.add_argument("--sweep", action="store_true", help="1M, 2M, 5M and 10M rows")
    parser.add_argument("--csv-rows", type=int, default=1_000_000, help="rows of the CSV prepare reads (0: none)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side, and of prepare and pyarrow")
    parser.add_argument("--row-group-rows", type=int, default=ROW_GROUP_ROWS, help="rows per Parquet row group")
    parser.add_argument("--json", type=Path, default=Path("pipeline_scale.json"))
    opts = parser.parse_args()
    if opts.repeats < 1:
        parser.error("--repeats must be at least 1")
    sizes = SWEEP if opts.sweep else (opts.rows,)
    # the CSV once, beside the last (largest) size: writing it costs more than the measurement
    results = [
        one_size(rows, opts.features, opts.csv_rows if i == len(sizes) - 1 else 0, opts.repeats, opts.row_group_rows)
        for i, rows in enumerate(sizes)
    ]
    opts.json.write_text(json.dumps(results, indent=2) + "\n")
    if len(results) > 1:
        print("\nrows         pipeline s   script s   ratio_time   ratio_rss   script, same memory s   ratio")
        for r in results:
            print(f"{r['rows']:>10,}   {r['pipeline']['s']:10.1f}   {r['script']['s']:8.1f}   "
                  f"{_shown(r['ratio_time']):>10}   {_shown(r['ratio_rss']):>9}   "
                  f"{r['script_same_memory']['s']:21.1f}   {_shown(r['ratio_time_same_memory']):>5}")  # fmt: skip
        print("(median runs)")
        for side in ("pipeline", "script"):
            fit = linear_fit(results, side)
            if fit:
                print(f"{side}: {fit[0]:.1f} s fixed + {fit[1]:.2f} s per million rows (least squares)")
    print(f"wrote {opts.json}")
    print(f"ratio_time_same_memory: {_shown(results[-1]['ratio_time_same_memory'])}")
    print(f"ratio_time: {_shown(results[-1]['ratio_time'])}")
    print(f"ratio_rss: {_shown(results[-1]['ratio_rss'])}")


if __name__ == "__main__":
    main()
