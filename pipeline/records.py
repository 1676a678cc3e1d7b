"""What a workspace records in the MLflow store it runs against: its runs there, their tags and datasets, its marks."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pipeline import files
from pipeline.lineage import dvc_hashes, relative_to, versions
from pipeline.store import connection, registry, runs
from pipeline.workspace import Context, workspace


def training_runs(
    ctx: Context, client: Any, run_info_path: Path, model_path: Path
) -> tuple[connection.RunRef, connection.RunRef]:
    """The parent run and model run, in this store, of the execution that trained the model at model_path.

    The run info file names them when this workspace trained that very model against this store. A model
    DVC restored from its run cache, or trained against another store, is looked up in this store by its
    checkpoint's hash; a store that never trained it gets a message naming both stores.
    """
    from mlflow.exceptions import MlflowException

    info = files.read_json(run_info_path) if run_info_path.exists() else {}
    sha = hashlib.sha256(model_path.read_bytes()).hexdigest()
    if info.get("store") == ctx.store_id and info.get("checkpoint_sha256") == sha:
        try:
            model_run = runs.run_ref(client, info["run_id"])
            return runs.run_ref(client, info["parent_run_id"], owned=info.get("parent_owned", True)), model_run
        except (KeyError, MlflowException):
            pass  # deleted from the store since: look it up like any other
    found = runs.trained(client, ctx.params.mlflow.experiment, sha)
    if found is not None:
        return found
    recorded = info.get("store")
    where = f" ({run_info_path} names runs in the store {recorded})" if recorded and recorded != ctx.store_id else ""
    raise ValueError(
        f"{model_path}: no run in the store {ctx.uri} trained this model{where}; "
        "`dvc repro` trains it there (`dvc repro --force train` if DVC says it is up to date)"
    )


def splits(meta: dict[str, Any]) -> tuple[runs.Split, runs.Split]:
    """The prepared train and evaluation splits as MLflow datasets (the same one when test_size is 0)."""
    origin = meta["source"]
    name = Path(origin).name if Path(origin).suffix else origin.split("(")[0]
    features, digest = tuple(meta["features"]), meta["sha256"][:12]
    if meta["evaluated_on"] == "train":
        both = runs.Split(f"{name}:train", digest, origin, meta["n_train"], features, "training, evaluation")
        return both, both
    train = runs.Split(f"{name}:train", digest, origin, meta["n_train"], features, "training")
    return train, runs.Split(f"{name}:test", digest, origin, meta["n_test"], features, "evaluation")


def champion_uri(ctx: Context) -> str:
    """The registry URI of this project's champion."""
    return f"models:/{ctx.params.register.model_name}@{registry.CHAMPION}"


def elsewhere(ctx: Context, otherwise: str = "") -> str:
    """Where this workspace registered its model, when that is another store than the one in use; else `otherwise`."""
    try:
        recorded = files.read_json(ctx.paths.registered).get("store")
    except (FileNotFoundError, ValueError):
        return otherwise
    if not recorded or recorded == ctx.store_id:
        return otherwise
    return (
        f"; this workspace registered its model in the store {recorded} ({ctx.paths.registered.name}): point "
        "MLFLOW_TRACKING_URI there, or `make run` registers it in this one"
    )


# What ctx.paths.recorded/<stage> says: the same bytes in every clone, so dvc.lock stays as committed.
RECORDED = "this stage's runs are in the MLflow store that models/tracking.json names\n"
PENDING = "this stage's runs are not (yet) in the MLflow store that models/tracking.json names\n"
RECORDING_STAGES = ("train", "evaluate", "register")


def mark_recorded(ctx: Context, stage: str) -> None:
    """Under `dvc repro`, note that this stage's runs are in the store: its dep <recorded>/<stage> (see dvc.yaml)."""
    if ctx.env.get("DVC_STAGE") == stage:
        files.write_text(workspace(ctx, ctx.paths.recorded) / stage, RECORDED)


def run_tags(ctx: Context, family: str, data_sha256: str) -> dict[str, str]:
    """Tags for a run of this execution: family, data, lineage, DVC input hashes, versions and seeds."""
    tags = {
        **runs.context_tags(ctx.source_name()),
        **ctx.lineage.tags(),
        **versions(),
        runs.FAMILY_TAG: family,
        "pipeline.data_sha256": data_sha256,
        "pipeline.seed.prepare": str(ctx.params.prepare.seed),
        "pipeline.seed.train": str(ctx.params.train.seed),
    }
    if ctx.env.get("DVC_STAGE"):
        tags["dvc.stage"] = ctx.env["DVC_STAGE"]
        inputs = {relative_to(p, ctx.root) for p in (ctx.paths.raw, ctx.paths.prepared)}
        tags.update(dvc_hashes(Path.cwd() / "dvc.lock", inputs))
    return tags
