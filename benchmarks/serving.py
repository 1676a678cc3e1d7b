"""Serving latency and throughput side by side in one run, plus batch scoring memory and speed.

Servers, all uvicorn with one worker on loopback, all answering the same single-row request:
  (a) our registered pyfunc (what `register` logs), through `mlflow models serve`
  (b) MLflow's stock pytorch flavor of the same network, through `mlflow models serve`
  (c) an identity pyfunc with the same signature: MLflow's own floor
  (d) a bare FastAPI endpoint calling the same torch layer
then (a) and (c) again with --workers 2, then `python -m pipeline predict` on 250k and 1M rows.
The last line is `ratio_to_floor: X`, the p50 latency of (a) over (c).

    python benchmarks/serving.py [--requests 1000] [--seconds 5] [--rows 1000000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import latency, post, start, stop

ROOT = Path(__file__).resolve().parents[1]
BODY = json.dumps({"dataframe_split": {"columns": ["x1", "x2"], "data": [[4, 3]]}}).encode()

IDENTITY = """
class Identity:
    def predict(self, model_input, params=None):
        return model_input

def _load_pyfunc(data_path):
    return Identity()
"""

BARE = """
import json, os, torch
from fastapi import FastAPI, Request, Response
from pipeline.model import load_checkpoint, predict_proba
import numpy as np

model, config = load_checkpoint(os.environ["BENCH_CHECKPOINT"])
app = FastAPI()

@app.get("/ping")
async def ping():
    return Response("\\n")

@app.post("/invocations")
async def invocations(request: Request):
    split = json.loads(await request.body())["dataframe_split"]
    proba = predict_proba(model, config, np.asarray(split["data"], dtype=np.float64))
    rows = [{"probability": p, "label": int(p >= config.threshold)} for p in proba.tolist()]
    return Response(json.dumps({"predictions": rows}), media_type="application/json")
"""


def build_models(tmp: Path) -> dict[str, Path]:
    """Save (a), (b) and (c) as local MLflow models; (d) reads (a)'s checkpoint."""
    import mlflow
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from pipeline.model import BinaryClassifier, ModelConfig, checkpoint_bytes
    from pipeline.params import load_params
    from pipeline.serving import SERVING_CONFIG, pyfunc_spec

    params = load_params(ROOT / "params.yaml")
    torch.manual_seed(params.train.seed)
    network = BinaryClassifier(2)
    config = ModelConfig(2, ("x1", "x2"), params.train.threshold)
    checkpoint = tmp / "model.pt"
    checkpoint.write_bytes(checkpoint_bytes(network, config))
    example = np.array([[1.0, 2.0], [6.0, 2.0]])
    paths = {name: tmp / name for name in ("ours", "stock_pytorch", "identity")}
    mlflow.pyfunc.save_model(paths["ours"], **pyfunc_spec(checkpoint, config.features, example, SERVING_CONFIG))
    outputs = Schema([ColSpec("float")])
    mlflow.pytorch.save_model(
        network,
        paths["stock_pytorch"],
        signature=ModelSignature(Schema([ColSpec("float", "x1"), ColSpec("float", "x2")]), outputs),
        serialization_format="pickle",  # pt2 takes tensor signatures only, not the columns we send
    )
    (tmp / "identity_model.py").write_text(IDENTITY)
    (tmp / "bare_app.py").write_text(BARE)
    spec = pyfunc_spec(checkpoint, config.features, example, SERVING_CONFIG)
    mlflow.pyfunc.save_model(
        paths["identity"],
        loader_module="identity_model",
        code_paths=[str(tmp / "identity_model.py")],
        signature=spec["signature"],
        input_example=spec["input_example"],
        pip_requirements=spec["pip_requirements"],
    )
    return {**paths, "checkpoint": checkpoint}


def throughput(port: int, seconds: float, clients: int = 8) -> float:
    """Requests per second with `clients` concurrent kept-alive connections."""
    counts = [0] * clients
    stop_at = time.perf_counter() + seconds

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.perf_counter() < stop_at:
            post(conn, BODY)
            counts[i] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def batch(model: Path, tmp: Path, rows: int, env: dict[str, str]) -> tuple[float, float, float, float]:
    """Wall and scoring seconds, peak RSS (MiB), input size (MiB) of `python -m pipeline predict`."""
    import pandas as pd

    rng = np.random.default_rng(0)
    source = tmp / f"batch_{rows}.csv"
    pd.DataFrame({"x1": rng.uniform(0, 7, rows), "x2": rng.uniform(0, 4, rows)}).to_csv(source, index=False)
    args = [sys.executable, "-m", "pipeline", "predict", "--model", str(model)]
    args += ["--input", str(source), "--output", str(tmp / f"scored_{rows}.parquet")]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
        seconds = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        if status != 0:
            sys.exit(f"batch scoring failed: {err.read().decode()}")
        scoring = float(re.search(rb" in ([0-9.]+) s \(", out.read()).group(1))  # the CLI's own timing
    return seconds, scoring, usage.ru_maxrss / 1024, source.stat().st_size / 2**20


def main() -> None:
    """Run every server in turn, then batch scoring; print the table and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rows", type=int, default=1_000_000)
    opts = parser.parse_args()

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"  # never the project's store
        models = build_models(tmp)
        serve = [sys.executable, "-m", "mlflow", "models", "serve", "--env-manager", "local", "-h", "127.0.0.1"]
        servers = {
            "(a) ours": serve + ["-m", str(models["ours"]), "-p", "{port}"],
            "(b) stock pytorch flavor": serve + ["-m", str(models["stock_pytorch"]), "-p", "{port}"],
            "(c) identity pyfunc (floor)": serve + ["-m", str(models["identity"]), "-p", "{port}"],
            "(d) bare FastAPI": [
                "uvicorn",
                "--app-dir",
                str(tmp),
                "--host",
                "127.0.0.1",
                "--port",
                "{port}",
                "bare_app:app",
            ],
            "(a) ours, --workers 2": serve + ["-m", str(models["ours"]), "-p", "{port}", "-w", "2"],
            "(c) identity, --workers 2": serve + ["-m", str(models["identity"]), "-p", "{port}", "-w", "2"],
        }
        server_env = {**env, "BENCH_CHECKPOINT": str(models["checkpoint"])}
        results = {}
        for label, args in servers.items():
            proc, port = start(args, server_env, tmp, tmp / "server.log")
            try:
                p50, p99 = latency(port, opts.requests, BODY)
                rps = throughput(port, opts.seconds)
            finally:
                stop(proc)
            results[label] = {"p50_ms": p50, "p99_ms": p99, "rps_8_clients": rps}
            print(f"{label:<30} p50 {p50:6.2f} ms   p99 {p99:6.2f} ms   {rps:7.0f} req/s at 8 clients", flush=True)

        scoring = {}
        for rows in sorted({opts.rows // 4, opts.rows}):
            seconds, busy, rss, size = batch(models["ours"], tmp, rows, env)
            scoring[rows] = {
                "seconds": seconds,
                "scoring_seconds": busy,
                "rows_per_s": rows / busy,
                "peak_rss_mib": rss,
                "input_mib": size,
            }

    ours, two = results["(a) ours"], results["(a) ours, --workers 2"]
    print()
    for short, label in (
        ("(c)", "(c) identity pyfunc (floor)"),
        ("(b)", "(b) stock pytorch flavor"),
        ("(d)", "(d) bare FastAPI"),
    ):
        other = results[label]
        p50 = ours["p50_ms"] / other["p50_ms"]
        rps = ours["rps_8_clients"] / other["rps_8_clients"]
        print(f"(a)/{short}: p50 latency {p50:.2f}x, throughput {rps:.2f}x")
    print(f"--workers 2: throughput {two['rps_8_clients'] / ours['rps_8_clients']:.2f}x of one worker")
    two_floor = results["(c) identity, --workers 2"]
    print(f"--workers 2, (a)/(c): p50 latency {two['p50_ms'] / two_floor['p50_ms']:.2f}x")
    for rows, s in scoring.items():
        print(
            f"batch scoring {rows:>9,} rows ({s['input_mib']:.0f} MiB CSV -> Parquet): {s['seconds']:.1f} s total,"
            f" {s['scoring_seconds']:.2f} s scoring ({s['rows_per_s']:,.0f}/s), peak RSS {s['peak_rss_mib']:.0f} MiB"
        )
    print(json.dumps({"servers": results, "batch": scoring}))
    floor = results["(c) identity pyfunc (floor)"]
    print(f"ratio_to_floor: {ours['p50_ms'] / floor['p50_ms']:.3f}")


if __name__ == "__main__":
    main()
