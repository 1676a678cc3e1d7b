"""`python -m pipeline` and the `pipeline` command run the click CLI, then exit without interpreter teardown."""

import logging
import os
import sys
from pathlib import Path

from pipeline import forkserver, interrupts

# Memory first touched in 2 MiB pages (numpy's large arrays, which it madvises for transparent huge pages, and
# pyarrow's default mimalloc pool) costs several times 4 KiB pages to fault in on a VM whose host backs guest memory
# lazily (Firecracker's, these machines'), and every stage touches fresh memory. torch and glibc ask for no huge
# pages unless told; numpy and pyarrow do the same here (benchmarks/pipeline_scale.py measures it). jemalloc (in
# pyarrow's Linux wheels) rather than the system pool: it keeps a freed row group's memory for the next one, where
# glibc hands it back and faults it in again. Each library reads its variable when first imported; the stages'
# children, Ray's local workers and the warm server inherit them.
MEMORY_ENV = {"NUMPY_MADVISE_HUGEPAGE": "0", "ARROW_DEFAULT_MEMORY_POOL": "jemalloc"}


def command() -> int:
    """Run the CLI command in sys.argv; its exit code."""
    interrupts.install()  # first: a signal during the imports below is handled too
    try:
        from pipeline.cli import main

        main()
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if not isinstance(done.code, int | None):
            print(done.code, file=sys.stderr)
    except interrupts.Interrupted as stop:  # runs were marked KILLED and temp files removed on the way out
        print(f"Error: {stop}; nothing half-written was kept", file=sys.stderr)
        code = 128 + stop.signum
    return code


def main() -> None:
    """`python -m pipeline` and the `pipeline` command: a DVC stage through the warm server, else the CLI here."""
    # MKL picks its kernels by CPU, and on an AVX-512 machine its sgemm rounded otherwise than on those before it:
    # the same params and data recorded another training history (`make run` changed dvc.lock and history.csv).
    # Its AVX path gives x86 CPUs since 2011 the same bits for the same thread count, slower than its AVX2 one
    # but faster than its compatible one for torch's products; lbfgs's passes over large X use numpy's BLAS, not
    # MKL. Set before torch loads MKL; the stage's children, torchrun's ranks and the warm server inherit it.
    os.environ.setdefault("MKL_CBWR", "AVX")
    for name, value in MEMORY_ENV.items():
        os.environ.setdefault(name, value)
    if sys.argv[1:2] == [forkserver.SERVE]:  # the warm server itself, started by a stage's forward()
        forkserver.serve(Path(sys.argv[2]), command)
        os._exit(0)
    code = forkserver.forward(sys.argv, dict(os.environ))  # a DVC stage, run by a warm interpreter
    if code is None:
        code = command()
    # Tearing down torch, MLflow and SQLAlchemy took a good part of each stage's time in `dvc repro`.
    # Every output is written and fsynced (pipeline.files) and every MLflow call committed before this.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
