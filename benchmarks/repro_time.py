"""Wall time of `dvc repro --force` on the tutorial in a temp copy of the project, store already created.

Prints the first run (which creates the store), the forced re-runs and a no-op run, and, last,
`repro_s: X`, the median forced re-run (goal <= 12 s on the 2-core machine). Run from the project's venv.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FILES = ["pipeline", "data/raw", "dvc.yaml", "params.yaml", ".dvc/config", ".dvc/plots", ".dvcignore", ".gitignore"]
REPEATS = 3


def sh(args: list[str], cwd: Path, env: dict[str, str]) -> None:
    subprocess.run(args, cwd=cwd, env=env, check=True, capture_output=True, text=True)


def main() -> None:
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "project"
        for name in FILES:
            src, dst = REPO / name, root / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
        env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", DVC_NO_ANALYTICS="1")
        env.update(GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@b", GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@b")
        for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "b"]):
            sh(cmd, root, env)
        start = time.perf_counter()
        sh([str(bin_dir / "dvc"), "repro"], root, env)  # creates the sqlite store (migrations, once)
        first = time.perf_counter() - start
        times = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            sh([str(bin_dir / "dvc"), "repro", "--force"], root, env)
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        sh([str(bin_dir / "dvc"), "repro"], root, env)
        noop = time.perf_counter() - start
    print(f"first dvc repro (creates the store): {first:6.1f} s")
    print(f"dvc repro --force, {REPEATS} runs:        {', '.join(f'{t:.1f}' for t in times)} s")
    print(f"no-op dvc repro:                     {noop:6.2f} s")
    print(f"repro_s: {statistics.median(times):.1f}")


if __name__ == "__main__":
    main()
