"""Where `dvc repro` spends its time on the tutorial, against the tutorial's own script, in a temp copy of the project.

Prints, measured in one run: `dvc repro --force` and the bare tutorial script (benchmarks/tutorial.py: python,
torch, the 1000-epoch loop, its prints) run alternately, a no-op `dvc repro`, and per stage (its dvc.lock
command run alone, as DVC runs it) the wall time split into interpreter start and exit, imports by package,
store work by kind, compute and the rest (benchmarks/profile_stage.py), and its wall when forked from the warm
server (pipeline/forkserver.py). `dvc repro --force` is timed both ways: stages forked from the warm server (what a
user gets from the second repro on) and each in its own interpreter (PIPELINE_FORKSERVER=0). Medians of REPEATS
runs. Last line: `ratio_to_bare: X` (warm dvc repro --force / the bare script; goal <= 2.5 on the 2-core machine).
Run from the venv.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import REPO, clean_env, project_copy

REPEATS = 3
HERE = Path(__file__).resolve().parent
COLUMNS = (
    "start+exit", "import torch", "import mlflow", "import scikit-learn", "import matplotlib", "import pyarrow",
    "import pandas", "import numpy", "import pipeline", "import other", "store: opening", "store: run creation",
    "store: logging", "store: artifacts", "store: model logging", "store: registry", "compute: waiting for the child",
    "compute", "figures", "other",
)  # fmt: skip


def timed(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Wall seconds of one command, which must succeed."""
    start = time.perf_counter()
    subprocess.run(args, cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def profile(root: Path, env: dict[str, str], stage: str, cmd: str, out: Path) -> dict[str, float]:
    """One stage's command run alone under profile_stage.py: its wall time by category."""
    args = cmd.split()
    assert args[:3] == ["python", "-m", "pipeline"], cmd
    stage_env = {**env, "DVC_STAGE": stage, "DVC_ROOT": str(root)}
    wall = timed([sys.executable, str(HERE / "profile_stage.py"), str(out), *args[3:]], root, stage_env)
    inside = json.loads(out.read_text())
    return {"wall": wall, "start+exit": wall - inside["wall"], **inside["spent"]}


def main() -> None:
    dvc, python = str(Path(sys.executable).parent / "dvc"), sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        root, env = project_copy(Path(tmp) / "project", extra=("data/raw",)), clean_env()
        cold_env = {**env, "PIPELINE_FORKSERVER": "0"}  # every stage its own interpreter
        first = timed([dvc, "repro"], root, cold_env)  # creates the sqlite store (migrations, once)
        starting = timed([dvc, "repro", "--force"], root, env)  # its first stage starts the warm server
        bare, forced, cold = [], [], []
        for _ in range(REPEATS):  # alternately: all three see the same machine
            bare.append(timed([python, str(REPO / "benchmarks" / "tutorial.py")], root, env))
            cold.append(timed([dvc, "repro", "--force"], root, cold_env))
            forced.append(timed([dvc, "repro", "--force"], root, env))
        noop = statistics.median(timed([dvc, "repro"], root, env) for _ in range(REPEATS))
        commands = {k: v["cmd"] for k, v in yaml.safe_load((root / "dvc.lock").read_text())["stages"].items()}
        runs: dict[str, list[dict[str, float]]] = {stage: [] for stage in commands}
        for i in range(REPEATS):
            for stage, cmd in commands.items():
                runs[stage].append(profile(root, cold_env, stage, cmd, Path(tmp) / f"{stage}-{i}.json"))
        warm = warm_walls(root, env, commands)
    print(f"first dvc repro (creates the store): {first:6.2f} s")
    print(f"first dvc repro --force with the warm server (started by its first stage): {starting:.2f} s")
    print(f"dvc repro --force, warm server: {', '.join(f'{t:.2f}' for t in forced)} s; every stage its own "
          f"interpreter: {', '.join(f'{t:.2f}' for t in cold)} s; bare tutorial script: "
          f"{', '.join(f'{t:.2f}' for t in bare)} s")  # fmt: skip
    print(f"no-op dvc repro: {noop:.2f} s (median of {REPEATS})")
    print(f"\nper stage, run alone (median of {REPEATS}, seconds): its wall forked from the warm server, then in its")
    print("own interpreter split by category (a category is exclusive of those inside it):")
    shown = [c for c in COLUMNS if any(r.get(c, 0) >= 0.005 for rs in runs.values() for r in rs)]
    width = max(map(len, shown))
    print(f"{'':<{width}} " + " ".join(f"{stage:>9}" for stage in runs))
    print(f"{'wall, warm server':<{width}} " + " ".join(f"{warm[stage]:9.2f}" for stage in runs))
    for column in ("wall", *shown):
        cells = [statistics.median(r.get(column, 0.0) for r in rs) for rs in runs.values()]
        print(f"{column:<{width}} " + " ".join(f"{c:9.2f}" for c in cells))
    print(f"\nrepro_s: {statistics.median(forced):.2f}")
    print(f"repro_cold_s: {statistics.median(cold):.2f}")
    print(f"bare_s: {statistics.median(bare):.2f}")
    print(f"noop_s: {noop:.2f}")
    print(f"ratio_to_bare_cold: {statistics.median(cold) / statistics.median(bare):.2f}")
    print(f"ratio_to_bare: {statistics.median(forced) / statistics.median(bare):.2f}")


def warm_walls(root: Path, env: dict[str, str], commands: dict[str, str]) -> dict[str, float]:
    """Each stage's command run alone as DVC runs it, forked from a warm server (started first, for this env)."""
    folder = Path(tempfile.gettempdir()) / f"pipeline-forkserver-{os.getuid()}"

    def forks() -> int:  # commands the servers have run, from their logs
        return sum(log.read_text().count(" forked ") for log in folder.glob("*.log"))

    before, served = set(folder.glob("*.sock")), forks()
    first = next(iter(commands))
    stage_env = {**env, "DVC_STAGE": first, "DVC_ROOT": str(root)}
    subprocess.run(commands[first].split(), cwd=root, env=stage_env, check=True, capture_output=True)
    deadline = time.monotonic() + 120
    while not set(folder.glob("*.sock")) - before and forks() == served:  # started, or DVC's served it
        if time.monotonic() > deadline:
            sys.exit("the warm server did not start")
        time.sleep(0.1)
    return {
        stage: statistics.median(timed(cmd.split(), root, {**stage_env, "DVC_STAGE": stage}) for _ in range(REPEATS))
        for stage, cmd in commands.items()
    }


if __name__ == "__main__":
    main()
