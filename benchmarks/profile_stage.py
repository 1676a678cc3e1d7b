"""Run one pipeline command in this process and write where its time went: `profile_stage.py OUT.json ARGS...`.

What `python -m pipeline ARGS...` does, its time charged to exclusive categories: the imports of torch, mlflow,
scikit-learn, matplotlib, pyarrow, pandas, numpy (each with what it pulls in), of the pipeline's own modules and
of others; each kind of store work (opening the store, creating runs, logging, artifacts, logging the model, the
registry); waiting for the stage's child process; compute in this process (prepare's, the gate's scoring);
drawing figures; the rest. A region inside another is charged to the inner one only (an import made while
logging counts as an import). Interpreter start and exit are what the caller's wall time has beyond `wall` here.
Used by repro_time.py; nothing of the pipeline is changed.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

PACKAGES = {"torch": "torch", "mlflow": "mlflow", "sklearn": "scikit-learn", "matplotlib": "matplotlib",
            "pyarrow": "pyarrow", "pandas": "pandas", "numpy": "numpy"}  # fmt: skip
STORE = {
    "connection": {"connect": "opening"},
    "runs": {
        "experiment_id": "run creation",
        "open_parent": "run creation",
        "create_child": "run creation",
        "log_params": "logging",
        "log_metrics": "logging",
        "log_history": "logging",
        "log_datasets": "logging",
        "set_tags": "logging",
        "run_ref": "logging",
        "run_name": "logging",
        "run_params": "logging",
        "trained": "logging",
        "log_files": "artifacts",
    },
    "registry": {"log_model": "model logging"},  # every other public function of registry: "registry"
}
CONTEXTS = {("connection", "running"): "logging", ("registry", "registry_lock"): "registry"}
COMPUTE = {  # module: {function: category}
    "pipeline.child": {"InChild.result": "compute: waiting for the child"},
    "pipeline.preparation": {"prepare_dir": "compute"},
    "pipeline.scoring": {"score_checkpoint": "compute"},
    "pipeline.gate": {"paired_evidence": "compute"},
    "pipeline.figures": {"render": "figures"},
}


class Clock:
    """Exclusive time per category: whatever runs is charged to the innermost open region."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self.stack = ["other"]
        self.last = time.perf_counter()

    def _charge(self) -> None:
        now = time.perf_counter()
        self.spent[self.stack[-1]] = self.spent.get(self.stack[-1], 0.0) + now - self.last
        self.last = now

    @contextlib.contextmanager
    def region(self, category: str) -> Iterator[None]:
        """Charge the block's time (less its inner regions) to `category`."""
        self._charge()
        self.stack.append(category)
        try:
            yield
        finally:
            self._charge()
            self.stack.pop()

    def timed(self, category: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """fn, charged to `category` while it runs."""

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            with self.region(category):
                return fn(*args, **kwargs)

        return call

    def timed_context(self, category: str, manager: Callable[..., Any]) -> Callable[..., Any]:
        """A context manager factory whose entering and leaving are charged to `category`."""

        @contextlib.contextmanager
        def wrapped(*args: Any, **kwargs: Any) -> Iterator[Any]:
            with self.region(category):
                inner = manager(*args, **kwargs)
                value = inner.__enter__()
            try:
                yield value
            except BaseException:
                with self.region(category):
                    if not inner.__exit__(*sys.exc_info()):
                        raise
            else:
                with self.region(category):
                    inner.__exit__(None, None, None)

        return wrapped


class TimedImports(importlib.abc.MetaPathFinder):
    """Charges the execution of each module's body to its package (exclusive of the modules it imports in turn)."""

    def __init__(self, clock: Clock, loaded: Callable[[str], None]) -> None:
        self.clock, self.loaded = clock, loaded

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        """The spec the other finders give, its loader timed."""
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or isinstance(loader, type) or not hasattr(loader, "exec_module"):
            return spec  # builtin and frozen modules: nothing worth timing
        execute = loader.exec_module
        top = fullname.split(".")[0]

        def exec_module(module: Any) -> None:
            enclosing = self.clock.stack[-1]
            if top == "pipeline":
                category = "import pipeline"
            elif enclosing.startswith("import ") and enclosing != "import pipeline":
                category = enclosing  # pulled in by a package being imported: part of that package's cost
            else:
                category = f"import {PACKAGES.get(top, 'other')}"
            with self.clock.region(category):
                execute(module)
            self.loaded(fullname)

        loader.exec_module = exec_module
        return spec


def instrument(clock: Clock) -> None:
    """Charge imports, the store's functions and the compute entry points to their categories.

    A module is instrumented once the stage has imported it (nothing is imported here that it would not).
    """
    sys.meta_path.insert(0, TimedImports(clock, lambda name: patch(clock, name)))


def patch(clock: Clock, name: str) -> None:
    """Wrap the functions of module `name`, just imported, if it is watched."""
    for short in ("connection", "runs", "registry"):
        module = sys.modules.get(f"pipeline.store.{short}")
        if module is None or module.__name__ != name:
            continue
        for name, fn in list(vars(module).items()):
            if name.startswith("_") or isinstance(fn, type) or getattr(fn, "__module__", None) != module.__name__:
                continue
            if (short, name) in CONTEXTS:
                setattr(module, name, clock.timed_context(f"store: {CONTEXTS[short, name]}", fn))
                continue
            kind = STORE.get(short, {}).get(name, "registry" if short == "registry" else None)
            if kind and callable(fn):
                setattr(module, name, clock.timed(f"store: {kind}", fn))
    for module_name, names in COMPUTE.items():
        module = sys.modules.get(module_name)
        if module is None or module_name != name:
            continue
        for dotted, category in names.items():
            owner_name, _, attr = dotted.rpartition(".")
            owner = getattr(module, owner_name) if owner_name else module
            setattr(owner, attr, clock.timed(category, getattr(owner, attr)))


def main() -> None:
    out, args = sys.argv[1], sys.argv[2:]
    started = time.perf_counter()
    clock = Clock()
    instrument(clock)
    from pipeline import interrupts
    from pipeline.cli import main as cli

    interrupts.install()
    code = 0
    try:
        cli.main(args=args, prog_name="python -m pipeline", standalone_mode=False)
    except BaseException as exc:  # noqa: BLE001 - report, then exit as the CLI would
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    clock._charge()
    spent = {k: round(v, 4) for k, v in sorted(clock.spent.items())}
    with open(out, "w") as fh:
        json.dump({"wall": round(time.perf_counter() - started, 4), "spent": spent}, fh)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # as pipeline/__main__.py: no interpreter teardown


if __name__ == "__main__":
    main()
