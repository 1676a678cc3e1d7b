"""cluster.engine ray against local on one machine: prepare and `pipeline predict` over a folder of Parquet files.

Writes --rows x --features of the prepare stage's synthetic table as --files Parquet files (a partitioned dataset),
registers a model for those features (a run on a small table of the same columns, in a temp MLflow store), then,
--repeats times in alternating order, on each engine:
  prepare: `python -m pipeline prepare` of the folder (test_size 0.2, standardize true), a part per file;
  predict: `python -m pipeline predict` of the folder with the registered model, to one Parquet file.
Each command's wall time and peak memory (its process tree's PSS summed, Ray's own processes included) are printed;
both engines' prepared folders must be the same bytes and their scores the same. Ends with the medians, each
engine's throughput (rows/s, what the README's plan for many machines starts from) and `ratio_prepare: X` and
`ratio_predict: Y` (Ray's median / local's: Ray's overhead on one machine, with cluster.workers = this machine's
cores).

    python benchmarks/engines.py --rows 10000000 --features 100 --files 10 [--repeats N] [--json F]
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import Watch, clean_env, project_copy
from pipeline_scale import ROW_GROUP_ROWS, SETTLE_S, warm_caches, write_table

ENGINES = ("local", "ray")


def same_tree(a: Path, b: Path) -> bool:
    """Two folders with the same file names and bytes."""
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all(filecmp.cmp(a / n, b / n, shallow=False) for n in names)


def main() -> None:
    """Write the dataset, register a model, time both engines alternately, print the ratios."""
    import pyarrow.parquet as pq

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--features", type=int, default=100)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("engines.json"))
    args = parser.parse_args()
    workers = os.cpu_count() or 1

    with tempfile.TemporaryDirectory(prefix="engines-") as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        write_table(tmp / "table", args.rows, args.features, ROW_GROUP_ROWS, args.files)
        write_table(tmp / "small.parquet", 20_000, args.features, ROW_GROUP_ROWS)
        wrote = time.perf_counter() - started
        print(f"wrote {args.rows} x {args.features} as {args.files} Parquet files in {wrote:.1f} s")
        project = project_copy(tmp / "project")
        env = {**clean_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}"}
        setup = ["--set", f"prepare.source={tmp / 'small.parquet'}", "--set", "prepare.standardize=true"]
        setup += ["--set", "train.epochs=20", "--out-dir", "setup"]
        Watch().check([sys.executable, "-m", "pipeline", "run", *setup], project, env)

        def commands(engine: str) -> dict[str, list[str]]:
            pipeline = [sys.executable, "-m", "pipeline"]
            on = ["--set", f"cluster.engine={engine}", "--set", f"cluster.workers={workers}"]
            prepare = ["prepare", "--prepared", str(tmp / f"prepared-{engine}"), "--set", "prepare.test_size=0.2"]
            prepare += ["--set", f"prepare.source={tmp / 'table'}", "--set", "prepare.standardize=true"]
            predict = ["predict", "--model", "models:/BinaryClassifier/1", "--input", str(tmp / "table")]
            predict += ["--output", str(tmp / f"scored-{engine}.parquet")]
            return {"prepare": [*pipeline, *prepare, *on], "predict": [*pipeline, *predict, *on]}

        runs: dict[str, dict[str, list[dict]]] = {e: {"prepare": [], "predict": []} for e in ENGINES}
        for repeat in range(args.repeats):
            for engine in ENGINES if repeat % 2 == 0 else ENGINES[::-1]:
                for step, command in commands(engine).items():
                    if step == "prepare":
                        shutil.rmtree(tmp / f"prepared-{engine}", ignore_errors=True)
                    warm_caches(tmp / "small.parquet")
                    time.sleep(SETTLE_S)
                    watch = Watch()
                    seconds = watch.check(command, project, env)
                    peak = watch.peak / 2**20
                    runs[engine][step].append({"seconds": seconds, "peak_pss_mib": peak})
                    print(f"run {repeat + 1} {engine:5s} {step:7s} {seconds:7.2f} s  peak {peak:7.0f} MiB")
            assert same_tree(tmp / "prepared-local", tmp / "prepared-ray"), "the engines' prepared folders differ"
            scored = [pq.read_table(tmp / f"scored-{engine}.parquet") for engine in ENGINES]
            assert scored[0].equals(scored[1]), "the engines' scores differ"  # row groups may be cut elsewhere

    medians = {
        e: {s: {k: statistics.median(r[k] for r in runs[e][s]) for k in ("seconds", "peak_pss_mib")} for s in runs[e]}
        for e in ENGINES
    }
    report = {"rows": args.rows, "features": args.features, "files": args.files, "workers": workers, "runs": runs}
    for engine in ENGINES:
        for step in ("prepare", "predict"):
            m = medians[engine][step]
            m["rows_per_s"] = args.rows / m["seconds"]
            print(f"{engine:5s} {step:7s} median {m['seconds']:7.2f} s  {m['rows_per_s']:12,.0f} rows/s  "
                  f"peak {m['peak_pss_mib']:7.0f} MiB")  # fmt: skip
    report["medians"] = medians
    for step in ("prepare", "predict"):
        report[f"ratio_{step}"] = medians["ray"][step]["seconds"] / medians["local"][step]["seconds"]
        print(f"ratio_{step}: {report[f'ratio_{step}']:.2f}")
    args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
