"""Wall time of `dvc repro --force` on the tutorial in a temp copy of the project, store already created.

Prints the first run (which creates the store), the forced re-runs and a no-op run, and, last,
`repro_s: X`, the median forced re-run (goal <= 12 s on the 2-core machine). Run from the project's venv.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import clean_env, project_copy

REPEATS = 3


def sh(args: list[str], cwd: Path, env: dict[str, str]) -> None:
    subprocess.run(args, cwd=cwd, env=env, check=True, capture_output=True, text=True)


def main() -> None:
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        root, env = project_copy(Path(tmp) / "project", extra=("data/raw",)), clean_env()
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
