"""The pipeline on a GPU against the same machine's CPU, side by side in one run.

In a temp git copy of the project, on the synthetic table (--rows x --features; 20% test, standardised, lbfgs):
  1. `dvc repro` with train.device=cpu, then `dvc exp run -S train.device=<device>` and `-S train.device=auto`:
     each train stage's wall time, and the device its MLflow run recorded (tag pipeline.device);
  2. with cuda, the train stage under `torchrun --nproc_per_node=<GPUs>` (NCCL from two GPUs on) against the
     one-process cuda model (the largest weight difference); then one process more than there are GPUs,
     which must stop with an error that says so;
  3. the registered model served by `python -m pipeline serve --device cpu` and `--device <device>` (MLflow's
     SERVING_MODEL_CONFIG): the answers to one --batch-rows request compared bit for bit, the p50 latency of
     a one-row request, and rows/s of --batch-rows requests.
Ends with `ratio_train_stage: X` (train stage wall, device / cpu), `ratio_train_rss_to_bound` (the train stages'
largest peak RSS / (1.5 x X_train + 1 GiB)) and `ratio_serving_batch: Y` (rows/s, device / cpu). With --device cpu
it runs on a machine without a GPU too (both sides are then the CPU).

    python benchmarks/gpu.py [--device cuda] [--rows 1000000] [--features 100] [--batch-rows 10000] [--json gpu.json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import Watch, clean_env, latency, post, project_copy, stage_of, start, stop


def on_synthetic(rows: int, features: int):
    """A project_copy edit: the synthetic table of rows x features, split, standardised, lbfgs on the CPU."""
    import yaml

    def edit(root: Path) -> None:
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["prepare"].update(source="synthetic", test_size=0.2, standardize=True)
        params["prepare"]["synthetic"].update(n_samples=rows, n_features=features)
        params["train"].update(optimizer="lbfgs", device="cpu")
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    return edit


def train_on(device: str, root: Path, env: dict[str, str]) -> dict:
    """`dvc repro` (cpu, the first) or `dvc exp run -S train.device=<device>`; the train stage's time and tag."""
    from mlflow import MlflowClient

    args = ["dvc", "repro"] if device == "cpu" else ["dvc", "exp", "run", "-S", f"train.device={device}"]
    watch = Watch(stage_of)
    seconds = watch.check(args, root, env)
    seen = watch.named["train"]
    run_id = json.loads((root / "models" / "mlflow_run.json").read_text())["run_id"]
    tags = MlflowClient(env["MLFLOW_TRACKING_URI"]).get_run(run_id).data.tags
    return {"asked": device, "s": seconds, "train_s": seen["last"] - seen["first"], "device": tags["pipeline.device"],
            "train_peak_rss": seen["peak_rss"]}  # fmt: skip


def torchrun(processes: int, root: Path, env: dict[str, str]) -> dict:
    """The train stage on cuda under torchrun with `processes` per node; its exit, output and weights."""
    from pipeline.model import load_checkpoint

    out = root / "out" / f"torchrun_{processes}"
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    args += ["-m", "pipeline", "train", "--set", "train.device=cuda", "--model", str(out / "model.pt")]
    args += ["--history", str(out / "history.csv"), "--run-info", str(out / "run.json")]
    seconds, status, tail = Watch().run(args, root, env)
    result = {"processes": processes, "s": seconds, "exit": status, "tail": tail}
    if status == 0:
        (ddp, _), (one, _) = load_checkpoint(out / "model.pt"), load_checkpoint(root / "models" / "model.pt")
        gaps = [(a - b).abs().max().item() for a, b in zip(ddp.parameters(), one.parameters(), strict=True)]
        result["max_weight_gap"] = max(gaps)
    return result


def serve(device: str, model_uri: str, body: dict[str, bytes], root: Path, env: dict[str, str], n: int) -> dict:
    """`pipeline serve --device <device>`: its answer to the batch, one-row p50 latency and batch rows/s."""
    args = [sys.executable, "-m", "pipeline", "serve", "--model", model_uri, "--device", device]
    args += ["--port", "{port}", "--max-request-mb", "512"]
    proc, port = start(args, env, root, root / f"serve_{device}.log")
    try:
        # warm: the first requests pay for imports, kernels and allocations
        one_ms, _ = latency(port, n, body["one"], warm=20)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        answer = post(conn, body["batch"])  # the answer compared across devices, and the batch's warm-up
        conn.close()
        batch_ms, _ = latency(port, 5, body["batch"], warm=0)
    finally:
        stop(proc)
    return {"p50_ms": one_ms, "batch_s": batch_ms / 1e3, "answer": answer}


def request_bodies(rows: int, features: int) -> dict[str, bytes]:
    """A one-row and a rows-row request of raw synthetic rows (a seed the training table does not use)."""
    from pipeline.sources import synthetic

    source = synthetic(max(rows, 2), features, 2, "y")
    X = np.concatenate([chunk.X for chunk in source.chunks()])[:rows]

    def body(block: np.ndarray) -> bytes:
        return json.dumps({"dataframe_split": {"columns": list(source.features), "data": block.tolist()}}).encode()

    return {"one": body(X[:1]), "batch": body(X)}


def main() -> None:
    """Train on both, torchrun, serve on both; print a table and the two ratios; write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="the device set against the CPU (cuda, mps or cpu)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=100)
    parser.add_argument("--batch-rows", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=200, help="one-row requests timed per server")
    parser.add_argument("--json", type=Path, default=Path("gpu.json"))
    opts = parser.parse_args()

    import torch

    from pipeline.devices import resolve_device

    resolve_device(opts.device)  # absent: stop now, with the pipeline's own message
    sys.stdout.reconfigure(line_buffering=True)  # each line as it comes: a long run shows how far it got
    print(f"{opts.rows:,} x {opts.features} synthetic rows, 20% test, standardised, lbfgs")
    with tempfile.TemporaryDirectory() as name:
        root = project_copy(Path(name) / "project", ("data/raw",), on_synthetic(opts.rows, opts.features))
        env = {**clean_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
        trains = []
        for device in dict.fromkeys(("cpu", opts.device, "auto")):
            t = train_on(device, root, env)
            trains.append(t)
            how = "dvc repro" if t["asked"] == "cpu" else "dvc exp run"
            print(
                f"train.device={t['asked']:<5} train stage {t['train_s']:6.1f} s (pipeline.device tag "
                f"{t['device']!r}), peak RSS {t['train_peak_rss'] / 2**20:,.0f} MiB; {how} {t['s']:.1f} s"
            )
        meta = json.loads((root / "data" / "prepared" / "meta.json").read_text())
        rss_bound = 1.5 * meta["n_train"] * opts.features * 4 + 2**30  # X_train, float32
        print(f"the train stage's peak RSS bound: 1.5 x X_train + 1 GiB = {rss_bound / 2**20:,.0f} MiB")
        runs = []
        if opts.device == "cuda":  # the last exp trained one process on cuda: models/model.pt is the reference
            for processes in (torch.cuda.device_count(), torch.cuda.device_count() + 1):
                r = torchrun(processes, root, env)
                runs.append(r)
                error = next((line.strip() for line in r["tail"].splitlines() if "Error" in line), "?")
                outcome = f"exit {r['exit']}: {error}"
                if r["exit"] == 0:
                    outcome = f"weights within {r['max_weight_gap']:.2e} of one process"
                print(f"torchrun --nproc_per_node={processes}: {r['s']:.1f} s, {outcome}")
        model_uri = json.loads((root / "models" / "registered.json").read_text())["model_uri"]
        body = request_bodies(opts.batch_rows, opts.features)
        served = {}
        for device in dict.fromkeys(("cpu", opts.device)):
            s = served[device] = serve(device, model_uri, body, root, env, opts.requests)
            print(
                f"serving {model_uri} on {device:<5} one row p50 {s['p50_ms']:6.2f} ms; {opts.batch_rows:,} rows "
                f"per request: {s['batch_s'] * 1e3:7.1f} ms, {opts.batch_rows / s['batch_s']:,.0f} rows/s"
            )

    cpu, gpu = served["cpu"], served[opts.device]
    a, b = (json.loads(s["answer"])["predictions"] for s in (cpu, gpu))
    gap = max(abs(x["probability"] - y["probability"]) for x, y in zip(a, b, strict=True))
    same = "bit for bit" if a == b else f"largest probability gap {gap:.2e}"
    print(f"answers to the {opts.batch_rows:,}-row request, {opts.device} against cpu: {same}")
    ratios = {
        "ratio_train_stage": next(t for t in trains if t["asked"] == opts.device)["train_s"] / trains[0]["train_s"],
        "ratio_train_rss_to_bound": max(t["train_peak_rss"] for t in trains) / rss_bound,
        "ratio_serving_batch": cpu["batch_s"] / gpu["batch_s"],
    }
    for s in served.values():
        del s["answer"]
    opts.json.write_text(json.dumps({"train": trains, "torchrun": runs, "serving": served, "identical": a == b,
                                     "max_probability_gap": gap, **ratios}, indent=2) + "\n")  # fmt: skip
    print(f"wrote {opts.json}")
    for key, value in ratios.items():
        print(f"{key}: {value:.3f}")


if __name__ == "__main__":
    main()
