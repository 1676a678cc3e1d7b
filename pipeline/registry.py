"""Logging the model, registering it, and moving the challenger and champion aliases."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.evaluate import scores
from pipeline.params import METRICS, RegisterParams

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

CHALLENGER = "challenger"
CHAMPION = "champion"
SHA_TAG = "model_sha256"
# What the served model needs; versions come from this environment, local build tags dropped.
SERVING_PACKAGES = ("mlflow", "torch", "numpy", "pandas")


@dataclass(frozen=True)
class Decision:
    """Whether the version becomes champion, and why, in words a reviewer can check."""

    promote: bool
    reason: str
    metric: str
    model: float
    baseline: float
    champion: float | None = None
    champion_version: str | None = None


def gate(
    metric: str,
    model: float,
    baseline: float,
    tolerance: float,
    champion: float | None = None,
    champion_version: str | None = None,
) -> Decision:
    """Champion only if no worse than the baseline (within tolerance) and no worse than the champion."""
    sign = 1.0 if METRICS[metric] else -1.0  # compare as "higher is better"
    facts = dict(metric=metric, model=model, baseline=baseline, champion=champion, champion_version=champion_version)
    if sign * (model - baseline) < -tolerance:
        why = f"{metric} {model:.6f} is worse than the baseline's {baseline:.6f} by more than {tolerance}"
        return Decision(False, why, **facts)
    if champion is not None and sign * (model - champion) < 0:
        why = f"{metric} {model:.6f} is worse than champion v{champion_version}'s {champion:.6f} on this test data"
        return Decision(False, why, **facts)
    against = f" and champion v{champion_version}'s {champion:.6f}" if champion is not None else ""
    why = f"{metric} {model:.6f} is no worse than the baseline's {baseline:.6f} (tolerance {tolerance}){against}"
    return Decision(True, why, **facts)


def fingerprint(checkpoint: bytes, model_config: dict[str, Any]) -> str:
    """Identity of a model: the checkpoint (weights, features, scaling, threshold) and how it serves."""
    serving = json.dumps(model_config, sort_keys=True).encode()
    return hashlib.sha256(checkpoint + b"\0" + serving).hexdigest()


def pip_requirements() -> list[str]:
    """Pins for the serving environment, from the versions installed here."""
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in SERVING_PACKAGES]


def find_version(client: MlflowClient, name: str, sha: str) -> ModelVersion | None:
    """The oldest version of `name` whose checkpoint has this fingerprint."""
    versions = client.search_model_versions(f"name = '{name}' and tags.{SHA_TAG} = '{sha}'")
    return min(versions, key=lambda v: int(v.version)) if versions else None


def champion_version(client: MlflowClient, name: str) -> ModelVersion | None:
    """The version behind @champion, if any."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def pyfunc_spec(
    checkpoint: Path, features: tuple[str, ...], example: np.ndarray, model_config: dict[str, Any]
) -> dict[str, Any]:
    """Arguments of mlflow.pyfunc.log_model/save_model for our model (loader module, no pickle).

    Columns are `double`: MLflow's REST parser casts JSON and CSV numbers to it, and float32 and
    float64 frames pass; MLflow itself refuses int64 frames from Python as a lossy cast.
    """
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    import pipeline

    return dict(
        loader_module="pipeline.serving",
        data_path=str(checkpoint),
        code_paths=[str(Path(pipeline.__file__).parent)],
        signature=ModelSignature(
            inputs=Schema([ColSpec("double", f) for f in features]),
            outputs=Schema([ColSpec("double", "probability"), ColSpec("long", "label")]),
        ),
        input_example=pd.DataFrame(example.astype(np.float64), columns=list(features)),
        pip_requirements=pip_requirements(),
        model_config=model_config,
    )


def log_model(run_id: str, spec: dict[str, Any]) -> str:
    """Log the pyfunc described by `spec` into the run; returns its URI."""
    import mlflow

    with mlflow.start_run(run_id=run_id):
        return mlflow.pyfunc.log_model(name="model", **spec).model_uri


def score_version(name: str, version: str, X: np.ndarray, features: tuple[str, ...]) -> np.ndarray | None:
    """Probabilities from a registered version on raw rows; None when it expects other features."""
    import mlflow
    import pandas as pd

    loaded = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    expected = loaded.metadata.get_input_schema().input_names()
    if tuple(expected) != tuple(features):
        return None
    return loaded.predict(pd.DataFrame(X.astype(np.float64), columns=list(features)))["probability"].to_numpy()


def champion_decision(
    client: MlflowClient,
    p: RegisterParams,
    version: str,
    results: dict[str, dict[str, float]],
    X_test: np.ndarray,
    y_test: np.ndarray,
    features: tuple[str, ...],
    threshold: float,
) -> Decision:
    """Gate `version` against the baseline and against the current champion re-scored on this test data."""
    model, baseline = results["model"][p.metric], results["baseline"][p.metric]
    champion = champion_version(client, p.model_name)
    if champion is None:
        return gate(p.metric, model, baseline, p.tolerance)
    if str(champion.version) == str(version):
        return Decision(True, f"v{version} is already the champion", p.metric, model, baseline)
    proba = score_version(p.model_name, champion.version, X_test, features)
    if proba is None:
        why = (
            f"champion v{champion.version} takes other features than {list(features)}: not comparable; "
            "register models for this data under another register.model_name"
        )
        return Decision(False, why, p.metric, model, baseline, champion_version=champion.version)
    champion_score = scores(y_test, proba, threshold)[p.metric]
    return gate(p.metric, model, baseline, p.tolerance, champion_score, champion.version)


def summary(client: MlflowClient, name: str, version: ModelVersion, new: bool, decision: Decision) -> dict[str, Any]:
    """What models/registered.json records."""
    current = client.get_model_version(name, version.version)  # search results carry no aliases
    return {
        "name": name,
        "version": int(current.version),
        "new_version": new,
        "aliases": sorted(current.aliases),
        "model_uri": f"models:/{name}/{current.version}",
        "run_id": current.run_id,
        "model_sha256": current.tags.get(SHA_TAG),
        "decision": asdict(decision),
    }
