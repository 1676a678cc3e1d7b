"""What makes a run identifiable: commit and dirty flag, DVC experiment, changed params, input hashes, versions."""

from __future__ import annotations

import json
import platform
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from pipeline.params import apply_overrides, flatten, load_yaml, read_tree

FAMILIES = {"model": "BinaryClassifier", "baseline": "LogisticRegression"}  # a run's family: its name
MAX_LABEL = 160  # run names stay readable in the runs table
VERSIONED = ("torch", "mlflow", "scikit-learn", "numpy", "dvc")


@dataclass(frozen=True)
class Lineage:
    """Where an execution comes from and what it changed relative to that revision."""

    commit: str | None
    dirty: bool | None
    exp_name: str | None
    baseline_rev: str | None
    changed: dict[str, Any] = field(default_factory=dict)  # params that differ from the baseline revision's

    def label(self) -> str:
        """`<DVC experiment or commit> · <changed params>`, e.g. `exp-3f2a1 · train.lr=0.5`."""
        where = self.exp_name or (f"{self.commit[:7]}{'*' if self.dirty else ''}" if self.commit else "no git")
        parts = [f"{k}={_short(v)}" for k, v in self.changed.items()]
        text = ", ".join(parts)
        while len(text) > MAX_LABEL and len(parts) > 1:
            parts.pop()
            text = f"{', '.join(parts)}, +{len(self.changed) - len(parts)} more"
        return f"{where} · {text}" if text else where

    def tags(self) -> dict[str, str]:
        """Tags every run of the execution carries."""
        tags = {"pipeline.changed_params": json.dumps(self.changed, default=str)}
        if self.commit:
            tags["mlflow.source.git.commit"] = self.commit
            tags["pipeline.git.dirty"] = str(bool(self.dirty)).lower()
        if self.exp_name:
            tags["dvc.exp_name"] = self.exp_name
        if self.baseline_rev:
            tags["dvc.exp_baseline_rev"] = self.baseline_rev
        return tags


def _short(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list) else "null" if value is None else str(value)


def _git(cwd: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def lineage(
    params_path: Path, overrides: tuple[str, ...], env: dict[str, str], root: Path, outputs: list[Path]
) -> Lineage:
    """Read git and DVC's experiment variables; diff the effective params against the baseline revision's file.

    `outputs`: the pipeline's output folders, whose changes do not make the checkout dirty.
    """
    cwd = Path.cwd()
    exp_name, baseline = env.get("DVC_EXP_NAME"), env.get("DVC_EXP_BASELINE_REV")
    head = _git(cwd, "rev-parse", "HEAD")
    commit = baseline or (head.strip() if head else None)
    # Paths relative to the root: the same under `dvc exp run --temp`, whose workspace is a copy of it.
    excluded = [f":(exclude){relative_to(p, root)}" for p in outputs] + [":(exclude)dvc.lock"]
    status = _git(cwd, "status", "--porcelain", "--untracked-files=no", "--", ".", *excluded)
    top = (_git(cwd, "rev-parse", "--show-toplevel") or str(cwd)).strip()
    relative = relative_to(params_path.resolve(), top)
    committed = _git(cwd, "show", f"{commit or 'HEAD'}:{relative}")
    current = flatten(apply_overrides(read_tree(params_path), overrides))
    changed: dict[str, Any] = {}
    if committed is not None:
        try:
            before = flatten(load_yaml(committed) or {})
        except yaml.YAMLError:
            before = {}
        changed = {k: v for k, v in current.items() if k not in before or before[k] != v}
    return Lineage(commit, None if status is None else bool(status.strip()), exp_name, baseline, changed)


def relative_to(path: Path, base: Path | str) -> str:
    """`path` relative to `base` (both resolved), or as given when it lies outside."""
    try:
        return str(Path(path).resolve().relative_to(Path(base).resolve()))
    except ValueError:
        return str(path)


def dvc_hashes(lock: Path, wanted: set[str]) -> dict[str, str]:
    """`dvc.md5.<path>` tags: the hashes dvc.lock holds for these paths (DVC writes each stage's entry as it ends)."""
    try:
        stages = (load_yaml(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
    except (OSError, yaml.YAMLError):
        return {}
    found: dict[str, str] = {}
    for entry in stages.values():
        for item in [*entry.get("deps", []), *entry.get("outs", [])]:
            if item.get("path") in wanted and item.get("md5"):
                found[f"dvc.md5.{item['path']}"] = item["md5"]
    return found


def versions() -> dict[str, str]:
    """Versions of the libraries that shape the numbers, as tags."""
    tags = {"pipeline.version.python": platform.python_version()}
    for name in VERSIONED:
        try:
            tags[f"pipeline.version.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return tags
