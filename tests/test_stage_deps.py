"""dvc.yaml's code deps are derived from the code: every pipeline module a stage's command can import is a dep.

Statically: `python -m pipeline <stage>` runs pipeline/__main__.py, cli.py's module-level imports and its
<stage> command function, then every import (at module level or inside a function, but not under
TYPE_CHECKING) of every module reached, and modules named by string (the pyfunc's loader module).
Dynamically: each stage's own command, run with PYTHONPROFILEIMPORTTIME=1 (inherited by its child
processes), imports no pipeline module outside its deps.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, run_env, sh

PACKAGE = "pipeline"


def module_file(name: str) -> Path | None:
    """The file of a pipeline module (a package's __init__.py), or None when there is no such module."""
    base = REPO / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _with_packages(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def _under_type_checking(tree: ast.AST) -> set[int]:
    """ids of the nodes inside `if TYPE_CHECKING:` blocks (never executed)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skipped.update(id(n) for n in ast.walk(child))
    return skipped


def imports_in(node: ast.AST, module: str, skipped: frozenset[int] | set[int] = frozenset()) -> set[str]:
    """The pipeline modules that the code under `node` (in `module`) imports or names by string."""
    found: set[str] = set()
    for n in ast.walk(node):
        if id(n) in skipped:
            continue
        if isinstance(n, ast.Import):
            names = [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            assert not n.level, f"{module}: a relative import; the project imports absolutely"
            names = [n.module] + [f"{n.module}.{a.name}" for a in n.names]  # `from pkg import submodule`
        elif isinstance(n, ast.Constant) and isinstance(n.value, str) and re.fullmatch(r"pipeline(\.\w+)+", n.value):
            names = [n.value]
        else:
            continue
        for name in names:
            if (name == PACKAGE or name.startswith(PACKAGE + ".")) and module_file(name):
                found |= {m for m in _with_packages(name) if module_file(m)}
    return found


def closure(command: str) -> set[str]:
    """Every pipeline module `python -m pipeline <command>` can import, in any process it starts."""
    cli = ast.parse(module_file("pipeline.cli").read_text())
    function = next(n for n in cli.body if isinstance(n, ast.FunctionDef) and n.name == command)
    top = [n for n in cli.body if isinstance(n, ast.Import | ast.ImportFrom)]
    todo = {"pipeline", "pipeline.__main__", "pipeline.cli"} | imports_in(function, "pipeline.cli")
    for node in top:
        todo |= imports_in(node, "pipeline.cli")
    seen = {"pipeline.cli"}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        tree = ast.parse(module_file(name).read_text())
        todo |= imports_in(tree, name, _under_type_checking(tree)) - seen
    return seen


def stage_commands() -> dict[str, str]:
    """dvc.yaml's stages and the pipeline command each runs."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: re.match(r"python -m pipeline (\w+)", spec["cmd"]).group(1) for name, spec in stages.items()}


def code_deps(stage: str) -> set[str]:
    """The pipeline/*.py deps dvc.yaml lists for a stage, as module names."""
    deps = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage].get("deps", [])
    files = [d for d in deps if isinstance(d, str) and d.startswith("pipeline/") and d.endswith(".py")]
    return {f.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for f in files}


def as_dep(module: str) -> str:
    """A module's file as dvc.yaml lists it."""
    return str(module_file(module).relative_to(REPO))


@pytest.mark.parametrize("stage", sorted(stage_commands()))
def test_each_stage_lists_every_module_its_command_can_import(stage):
    imported, listed = closure(stage_commands()[stage]), code_deps(stage)
    should = sorted(as_dep(m) for m in imported)
    assert listed == imported, (
        f"dvc.yaml stage {stage!r}: missing {sorted(as_dep(m) for m in imported - listed)}, "
        f"never imported {sorted(listed - imported)}; its code deps should be exactly:\n  - " + "\n  - ".join(should)
    )


def test_the_derivation_sees_imports_inside_functions_and_by_name():
    """The rule itself: in-function imports count, TYPE_CHECKING ones do not, the loader module is found."""
    register = closure("register")
    assert {"pipeline.tables", "pipeline.interrupts", "pipeline.serving", "pipeline.__main__"} <= register
    assert "pipeline.tracking_server" not in register  # another command's import inside cli.py
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pipeline import model\n")
    assert imports_in(tree, "pipeline.x", _under_type_checking(tree)) == set()


def test_stages_are_the_commands_and_none_imports_another():
    """pipeline/stages/ holds one module per command, each with execute(); what two share is a core module."""
    from pipeline.cli import main

    modules = {p.stem: p for p in (REPO / PACKAGE / "stages").glob("*.py") if p.stem != "__init__"}
    assert set(modules) == set(main.commands) - {"run"}  # run is the flow of the stages: pipeline/flow.py
    for stem, path in sorted(modules.items()):
        tree = ast.parse(path.read_text())
        assert any(isinstance(n, ast.FunctionDef) and n.name == "execute" for n in tree.body), f"{path}: no execute()"
        others = {m for m in imports_in(tree, f"{PACKAGE}.stages.{stem}") if m.startswith(f"{PACKAGE}.stages.")}
        assert not others, f"{path} imports another stage: {sorted(others)}"


def test_a_stage_imports_nothing_outside_its_deps_at_run_time(project):
    """Each stage's command (from dvc.lock), run with its children reporting imports: all within its deps."""
    env = run_env(DVC_SITE_CACHE_DIR=str(project.parent / "dvc-site"))
    sh(["dvc", "repro"], project, env)
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    for stage in stage_commands():
        proc = subprocess.run(
            lock[stage]["cmd"], shell=True, cwd=project, env={**env, "PYTHONPROFILEIMPORTTIME": "1"},
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        loaded = set(re.findall(r"\|\s+(pipeline(?:\.\w+)*)\s*$", proc.stderr, re.MULTILINE))
        assert "pipeline.cli" in loaded, proc.stderr[-3000:]
        assert loaded <= code_deps(stage), f"{stage}: imported at run time, not a dep: {loaded - code_deps(stage)}"

    # A change to the prepared format is a change to every stage that writes or reads it; a change to the cell
    # validator is one to the stages that parse cells (prepare, and register's served model), not to train's.
    for module in ("dataset.py", "tables.py"):
        with (project / "pipeline" / module).open("a") as fh:
            fh.write("# changed now\n")
    status = json.loads(sh(["dvc", "status", "--json"], project, env).stdout)
    changed = {stage: {k: v for entry in entries if entry != "always changed"
                       for k, v in entry.get("changed deps", {}).items()}
               for stage, entries in status.items()}  # fmt: skip
    assert set(changed) == set(stage_commands()), status  # prepare, and every stage after it
    both = {"pipeline/dataset.py": "modified", "pipeline/tables.py": "modified"}
    assert changed["prepare"] == changed["register"] == both and not changed["tracking"], status
    assert changed["train"] == changed["evaluate"] == {"pipeline/dataset.py": "modified"}, status


COMMITTED = ["dvc.lock", "models/tracking.json", "models/history.csv", "metrics", "plots"]


def test_the_committed_dvc_lock_records_this_trees_code_params_and_data(project):
    """dvc.lock as committed is the last `make run` of this very code, params and raw data (re-run and commit it)."""
    for name in COMMITTED:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, project / name)
    env = run_env(DVC_SITE_CACHE_DIR=str(project.parent / "dvc-site"))
    status = json.loads(sh(["dvc", "status", "--json"], project, env).stdout)
    outputs = {
        o["path"] for e in yaml.safe_load((REPO / "dvc.lock").read_text())["stages"].values() for o in e.get("outs", [])
    }
    stale = {}
    for stage, entries in status.items():
        for entry in entries:
            if entry == "always changed":
                continue
            changed = {**entry.get("changed deps", {}), **entry.get("changed outs", {})}
            # A fresh checkout lacks what DVC caches (data/prepared, the model) and the marks of what a store holds
            # (models/recorded/*, git-ignored): those are "deleted", nothing else.
            missing = outputs | {f"models/recorded/{stage}"}
            wrong = {k: v for k, v in changed.items() if not (v in ("deleted", "not in cache") and k in missing)}
            if wrong or set(entry) - {"changed deps", "changed outs"}:
                stale[stage] = entry
    assert not stale, f"dvc.lock is stale: {stale}; run `make run` and commit {', '.join(COMMITTED)}"
