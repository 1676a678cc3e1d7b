"""Typed, frozen parameters loaded from params.yaml; every error names the offending key."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class ParamsError(ValueError):
    """A params file or override that does not match the schema."""


DEVICES = ("auto", "cpu", "cuda", "mps")
OPTIMIZERS = ("sgd", "adam", "lbfgs")
MISSING = ("error", "drop")  # prepare.missing: what a row with a missing feature or label does
ENGINES = ("local", "ray")  # cluster.engine: where row work runs
# Metric name -> True when higher is better; evaluate computes exactly these.
METRICS = {
    "accuracy": True,
    "log_loss": False,
    "roc_auc": True,
    "f1": True,
    "precision": True,
    "recall": True,
}


@dataclass(frozen=True)
class SyntheticParams:
    """Size of the generated table (prepare.source: synthetic)."""

    n_samples: int
    n_features: int


@dataclass(frozen=True)
class PrepareParams:
    """Where the table comes from and how it is split."""

    source: str
    label: str
    positive: str | None
    features: list[str] | None
    missing: str
    test_size: float
    standardize: bool
    seed: int
    synthetic: SyntheticParams


@dataclass(frozen=True)
class TrainParams:
    """The tutorial's training loop settings, plus the optimizer, batch size and L2 penalty."""

    seed: int
    lr: float
    epochs: int
    device: str
    log_every: int
    threshold: float
    optimizer: str
    batch_size: int | None
    C: float | None


@dataclass(frozen=True)
class BaselineParams:
    """scikit-learn LogisticRegression settings."""

    C: float
    max_iter: int
    solver: str


@dataclass(frozen=True)
class EvaluateParams:
    """Evaluation settings."""

    baseline: BaselineParams


@dataclass(frozen=True)
class RegisterParams:
    """Model registry name and the champion gate's evidence rules."""

    model_name: str
    metric: str
    tolerance: float
    level: float
    resamples: int
    seed: int


@dataclass(frozen=True)
class MlflowParams:
    """Tracking settings (the store itself comes from MLFLOW_TRACKING_URI or the repo root)."""

    experiment: str


@dataclass(frozen=True)
class ClusterParams:
    """Where row work runs: this process (local), or Ray tasks on a local Ray instance or a cluster (ray)."""

    engine: str
    address: str | None  # empty: start a local Ray instance; `auto` or `ray://host:port`: join that cluster
    workers: int | None  # Ray tasks at a time; empty: the cluster's CPUs


@dataclass(frozen=True)
class Params:
    """All sections of params.yaml."""

    prepare: PrepareParams
    train: TrainParams
    evaluate: EvaluateParams
    register: RegisterParams
    mlflow: MlflowParams
    cluster: ClusterParams

    def section(self, name: str) -> dict[str, Any]:
        """One section as a flat dict with dotted keys, for logging as MLflow params."""
        return _flatten(dataclasses.asdict(getattr(self, name)), name)

    def knobs(self) -> dict[str, Any]:
        """Every param of every section, flat: what each run of an execution logs."""
        return {k: v for f in dataclasses.fields(self) for k, v in self.section(f.name).items()}


def _flatten(tree: dict[str, Any], prefix: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        flat.update(_flatten(value, name) if isinstance(value, dict) else {name: value})
    return flat


def flatten(tree: dict[str, Any]) -> dict[str, Any]:
    """A raw params tree as {dotted.key: value} (to compare params files of two revisions)."""
    return _flatten(tree, "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check one leaf value against its annotated type; ints are accepted where floats are."""
    args = typing.get_args(tp)
    if type(None) in args:  # `X | None`: empty or null means None
        if value is None or value == "":
            return None
        tp = next(a for a in args if a is not type(None))
    if typing.get_origin(tp) is list:
        if not isinstance(value, list):
            raise ParamsError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, typing.get_args(tp)[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
        if isinstance(value, bool):  # YAML 1.1 reads yes/no/on/off/true/false as booleans
            raise ParamsError(f'{key}: expected text, got the boolean {value!r}: quote it, e.g. "yes"')
    else:  # pragma: no cover - a schema bug, not user input
        raise TypeError(f"unsupported type {tp!r} for {key}")
    if not ok:
        allowed = f"{tp.__name__} or null" if args else tp.__name__
        raise ParamsError(f"{key}: expected {allowed}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, tree: Any, prefix: str) -> Any:
    """Build a dataclass from a mapping, failing on unknown, missing or mistyped keys."""
    if not isinstance(tree, dict):
        raise ParamsError(f"{prefix}: expected a mapping, got {type(tree).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(tree) - set(names))
    if unknown:
        raise ParamsError(f"unknown key {_join(prefix, unknown[0])} (allowed: {', '.join(names)})")
    missing = [n for n in names if n not in tree]
    if missing:
        raise ParamsError(f"missing key {_join(prefix, missing[0])}")
    values = {}
    for name in names:
        tp, key = hints[name], _join(prefix, name)
        if dataclasses.is_dataclass(tp):
            values[name] = _build(tp, tree[name], key)
        else:
            values[name] = _coerce(tree[name], tp, key)
    return cls(**values)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def load_yaml(text: str) -> Any:
    """yaml.safe_load, through libyaml's parser where PyYAML has it: the same documents, parsed several times faster."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `section.key=value`; the value is parsed as YAML so `lr=0.5` is a float (None when empty)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"override {text!r}: expected section.key=value")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ParamsError(f"override {key}: cannot parse value {raw!r}: {exc}") from exc
    return key.strip().split("."), value


def apply_overrides(tree: dict[str, Any], overrides: typing.Iterable[str]) -> dict[str, Any]:
    """Return a copy of the raw params tree with each override applied to an existing key.

    An empty value (`train.lr=`) keeps the file's value, so MLproject parameters can default to
    params.yaml; `null` sets a key to null.
    """
    tree = _deep_copy(tree)
    for text in overrides:
        path, value = parse_override(text)
        node = tree
        for depth, part in enumerate(path[:-1]):
            node = node.get(part) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                raise ParamsError(f"override {text!r}: unknown section {'.'.join(path[: depth + 1])}")
        if not isinstance(node, dict) or path[-1] not in node:
            raise ParamsError(f"override {text!r}: unknown key {'.'.join(path)}")
        if text.partition("=")[2].strip():  # empty: keep the file's value (the key was still checked)
            node[path[-1]] = value
    return tree


def _deep_copy(tree: Any) -> Any:
    return {k: _deep_copy(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


def read_tree(path: str | Path) -> dict[str, Any]:
    """The raw YAML mapping of a params file, with errors that name the file."""
    path = Path(path)
    try:
        tree = load_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ParamsError(f"{path}: params file not found") from exc
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    return tree or {}


def load_params(path: str | Path, overrides: typing.Iterable[str] = ()) -> Params:
    """Read params.yaml, apply `section.key=value` overrides and validate every key."""
    return build_params(read_tree(path), overrides, str(path))


def build_params(tree: dict[str, Any], overrides: typing.Iterable[str], where: str) -> Params:
    """Validate a raw params tree (after overrides); errors are prefixed with `where`."""
    try:
        params = _build(Params, apply_overrides(tree, overrides), "")
        _check_ranges(params)
    except ParamsError as exc:
        raise ParamsError(f"{where}: {exc}") from exc
    return params


def _check_ranges(p: Params) -> None:
    """Reject values that have the right type but no meaning."""
    checks = [
        ("prepare.test_size", 0.0 <= p.prepare.test_size < 1.0, "must be in [0, 1)"),
        ("prepare.missing", p.prepare.missing in MISSING, f"must be one of {', '.join(MISSING)}"),
        ("train.lr", p.train.lr > 0, "must be > 0"),
        ("train.epochs", p.train.epochs >= 0, "must be >= 0"),
        ("train.log_every", p.train.log_every >= 1, "must be >= 1"),
        ("train.threshold", 0.0 < p.train.threshold < 1.0, "must be in (0, 1)"),
        ("train.device", p.train.device in DEVICES, f"must be one of {', '.join(DEVICES)}"),
        ("train.optimizer", p.train.optimizer in OPTIMIZERS, f"must be one of {', '.join(OPTIMIZERS)}"),
        ("train.batch_size", p.train.batch_size is None or p.train.batch_size >= 1, "must be >= 1 or null"),
        ("train.C", p.train.C is None or p.train.C > 0, "must be > 0 or null"),
        (
            "train.batch_size",
            p.train.optimizer != "lbfgs" or p.train.batch_size is None,
            "must be null (full batch) with train.optimizer lbfgs",
        ),
        ("evaluate.baseline.C", p.evaluate.baseline.C > 0, "must be > 0"),
        ("register.metric", p.register.metric in METRICS, f"must be one of {', '.join(METRICS)}"),
        ("register.tolerance", p.register.tolerance >= 0, "must be >= 0"),
        ("register.level", 0.5 <= p.register.level < 1.0, "must be in [0.5, 1)"),
        ("register.resamples", p.register.resamples >= 100, "must be >= 100"),
        ("cluster.engine", p.cluster.engine in ENGINES, f"must be one of {', '.join(ENGINES)}"),
        ("cluster.workers", p.cluster.workers is None or p.cluster.workers >= 1, "must be >= 1 or null"),
    ]
    for key, ok, why in checks:
        if not ok:
            value = _lookup(p, key)
            raise ParamsError(f"{key}: {why}, got {value!r}")


def _lookup(p: Params, key: str) -> Any:
    node: Any = p
    for part in key.split("."):
        node = getattr(node, part)
    return node
