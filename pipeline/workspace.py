"""The workspace a command runs in: its params, its project root and store, its paths, and what dead runs left."""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import files
from pipeline.params import Params, build_params, flatten, load_yaml, read_tree
from pipeline.store import connection, location

if TYPE_CHECKING:
    from pipeline.lineage import Lineage


@dataclass(frozen=True)
class Paths:
    """Every file the stages read or write, from dvc.yaml's `vars: paths` (the one place they are declared)."""

    tracking: Path
    recorded: Path
    raw: Path
    prepared: Path
    model: Path
    history: Path
    run_info: Path
    metrics: Path
    plots: Path
    registered: Path
    reports: Path

    @classmethod
    def from_dvc_yaml(cls, root: Path) -> Paths:
        """Read the paths from <root>/dvc.yaml, relative to root."""
        found = _declared_paths(root / "dvc.yaml", _dvc_yaml(root))
        return cls(**{k: root / found[k] for k in found})

    def under(self, folder: Path) -> Paths:
        """The same layout with every output moved under `folder` (the raw data stays where it is)."""
        root = folder.resolve()
        moved = {f.name: root / getattr(self, f.name).name for f in fields(self) if f.name not in ("raw", "prepared")}
        return replace(self, prepared=root / "prepared", **moved)


@dataclass(frozen=True)
class Context:
    """What every command starts from: the params (file and overrides), the project root, the environment."""

    params: Params
    params_path: Path
    overrides: tuple[str, ...]
    root: Path
    env: dict[str, str]
    command: str

    @classmethod
    def load(cls, params_path: str | Path, overrides: tuple[str, ...], env: dict[str, str], command: str) -> Context:
        """Validate the params and find the project root."""
        params_path = Path(params_path)
        params = build_params(read_tree(params_path), overrides, str(params_path))
        return cls(params, params_path, overrides, project_root(env, Path.cwd()), env, command)

    @property
    def uri(self) -> str:
        """The MLflow tracking (and registry) URI."""
        return location.tracking_uri(self.root, self.env)

    @property
    def store_id(self) -> str:
        """The store as this workspace's records name it (see location.identity)."""
        return location.identity(self.root, self.env)

    @functools.cached_property
    def paths(self) -> Paths:
        """The pipeline's paths from dvc.yaml."""
        return Paths.from_dvc_yaml(self.root)

    @functools.cached_property
    def lineage(self) -> Lineage:
        """Where this execution comes from (git, DVC) and how its params differ from that revision."""
        from pipeline.lineage import lineage

        p = self.paths
        return lineage(self.params_path, self.overrides, self.env, self.root, [p.prepared, p.model.parent,
                       p.metrics.parent, p.plots])  # fmt: skip

    def source_name(self) -> str:
        """What MLflow's Source column shows: the DVC stage, or the command as typed."""
        stage = self.env.get("DVC_STAGE")
        return f"dvc.yaml:{stage}" if stage else f"python -m pipeline {self.command}"


def _dvc_yaml(root: Path) -> dict:
    """<root>/dvc.yaml as written (vars not filled in)."""
    where = root / "dvc.yaml"
    try:
        return load_yaml(where.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ValueError(f"{where}: not found; it declares the pipeline's paths (vars: paths)") from None


def _declared_paths(where: Path, tree: dict) -> dict[str, str]:
    """dvc.yaml's `vars: paths`, checked to name exactly the fields of Paths."""
    found = next((v["paths"] for v in tree.get("vars", []) if isinstance(v, dict) and "paths" in v), None)
    names = [f.name for f in fields(Paths)]
    if not isinstance(found, dict) or sorted(found) != sorted(names):
        raise ValueError(f"{where}: vars must hold paths with exactly the keys {', '.join(names)}")
    return found


def unseen_by_dvc(ctx: Context, stage: str, read: list[str]) -> list[str]:
    """Of the files (paths or URIs) a DVC stage reads, those under none of its deps in dvc.yaml.

    DVC reruns a stage when a dep changes, and says "up to date" otherwise: a file outside every dep can change
    unseen. A dep with a ${...} that is not one of `vars: paths` or a params.yaml key, or a stage this dvc.yaml
    does not declare, is taken to hold everything.
    """
    tree = _dvc_yaml(ctx.root)
    values = flatten({"paths": _declared_paths(ctx.root / "dvc.yaml", tree), **read_tree(ctx.params_path)})
    declared = tree.get("stages", {}).get(stage.split("@")[0])
    if declared is None:  # a stage of another dvc.yaml: its deps are not known here
        return []
    deps = []
    for dep in declared.get("deps", []):
        try:
            deps.append(re.sub(r"\$\{\s*([\w.]+)\s*\}", lambda m: str(values[m[1]]), str(dep)))
        except KeyError:
            return []
    here = Path.cwd()  # DVC runs a stage in its workspace, and resolves the stage's deps there
    local = [here / d for d in deps if "://" not in d]

    def covered(path: str) -> bool:
        if "://" in path:
            return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps if "://" in d)
        # As written (a link under a dep is the dep's: DVC hashes what it points to), or where links lead
        spelled, real = Path(os.path.abspath(here / path)), (here / path).resolve()
        return any(spelled.is_relative_to(os.path.abspath(d)) or real.is_relative_to(d.resolve()) for d in local)

    return [path for path in read if not covered(path)]


def project_root(env: dict[str, str], cwd: Path) -> Path:
    """The repository root: DVC_ROOT (or cwd) walked up to the folder holding .dvc/."""
    start = Path(env.get("DVC_ROOT") or cwd).resolve()
    parts = start.parts
    # `dvc exp run --temp/--queue` runs in <root>/.dvc/tmp/exps/<name>: anchor on the real root.
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    for folder in (start, *start.parents):
        if (folder / ".dvc").is_dir():
            return folder
    return start


def workspace(ctx: Context, path: Path) -> Path:
    """`path` (one of ctx.paths) in the workspace this process works in: a temp copy under `dvc exp run --temp`.

    DVC runs a stage in its workspace (DVC_ROOT names the repository the experiment belongs to, not the copy).
    """
    return (Path.cwd() if ctx.env.get("DVC_STAGE") else ctx.root) / path.relative_to(ctx.root)


def tidy(ctx: Context) -> None:
    """What a process killed outright (SIGKILL, power loss) left, cleared by whatever command comes next.

    Its temp files and folders beside the outputs, and, in a sqlite store, its runs left RUNNING (found with
    sqlite3; opening the store marks them KILLED, as every command that opens a store does).
    """
    outputs = [workspace(ctx, getattr(ctx.paths, f.name)) for f in fields(Paths)]
    for folder in {*(p.parent for p in outputs), *(p for p in outputs if p.is_dir())} - {workspace(ctx, ctx.root)}:
        files.remove_leftovers(folder)
    if connection.dead_owners_recorded(ctx.uri):
        connection.connect(ctx.uri)
