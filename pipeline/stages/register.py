"""register: log the model, register it as @challenger, and move @champion only on the gate's evidence."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pipeline import files, gate
from pipeline.records import mark_recorded, splits, training_runs
from pipeline.reporting import registration_line
from pipeline.store import connection, registry, runs
from pipeline.workspace import Context

if TYPE_CHECKING:
    from pipeline.dataset import Prepared


def execute(
    ctx: Context, prepared_dir: Path, model_path: Path, run_info_path: Path, metrics_path: Path, out: Path
) -> None:
    """One version per distinct checkpoint; @challenger on every new one, @champion through the gate.

    A version's gate decision is written once, when the version is registered (its `gate.*` tags); an
    execution that registers the same checkpoint again records its own decision in its own run and adds
    a record to the model's history, naming the version it reused.
    """
    from pipeline import dataset, serving

    p = ctx.params.register
    meta = dataset.read_meta(prepared_dir)
    prepared = dataset.load_prepared(prepared_dir)  # memory-mapped: nothing is read until a model is scored
    results = files.read_json(metrics_path)
    checkpoint = model_path.read_bytes()
    client = connection.connect(ctx.uri)
    parent, run = training_runs(ctx, client, run_info_path, model_path)
    _, eval_split = splits(meta)
    sha = registry.fingerprint(checkpoint, serving.SERVING_CONFIG)
    with connection.running(client, run, parent), registry.registry_lock(client, ctx.uri, p.model_name):  # one step
        version = registry.find_version(client, p.model_name, sha)
        new = version is None
        if new:
            version = _register(ctx, client, run, prepared, model_path, results, eval_split, sha)
        else:
            _repair_challenger(ctx, client, str(version.version))
        number = str(version.version)
        decision = _decide(ctx, client, number, results, prepared, model_path)
        record = {"version": number, "run_id": run.run_id, "new_version": new, **asdict(decision)}
        runs.log_files(client, run.run_id, {"gate/decision.json": json.dumps(record, indent=2).encode()})
        summary_tags = _summary_tags(decision, run.run_id)
        reused = {
            "registered_model": p.model_name,
            "registered_version": number,
            "version_reused": str(not new).lower(),
        }
        runs.set_tags(client, run.run_id, {**summary_tags, **{f"pipeline.{k}": v for k, v in reused.items()}})
        if "gate.decision" not in version.tags:  # the version's own evidence: written once, when first decided
            registry.set_version_tags(client, p.model_name, number, summary_tags)
        if not new:
            why = f"run {run.run_id} registered the checkpoint of v{number} again: {decision.reason}"
            registry.record_history(client, ctx.uri, p.model_name, {"reused": number, "reason": why,
                                 "evidence": _evidence(decision, run.run_id)})  # fmt: skip
        if decision.promote:
            registry.move_alias(
                client,
                ctx.uri,
                p.model_name,
                registry.CHAMPION,
                number,
                decision.reason,
                _evidence(decision, run.run_id),
            )
        summary = registry.version_summary(client, p.model_name, number, new, asdict(decision))
        summary.update(decision_run_id=run.run_id, store=ctx.store_id)
        files.write_json(out, summary)
        mark_recorded(ctx, "register")
    click.echo(registration_line(summary))


def _register(
    ctx: Context,
    client: Any,
    run: connection.RunRef,
    prepared: Prepared,
    model_path: Path,
    results: dict,
    eval_split: runs.Split,
    sha: str,
) -> Any:
    """Log the pyfunc (its metrics: the evaluation's), register a version and point @challenger at it."""
    from pipeline import dataset, serving

    example = dataset.raw_rows(prepared, prepared.X_test[:5])  # what a client sends: raw features
    spec = serving.pyfunc_spec(model_path, prepared.features, example, serving.SERVING_CONFIG)
    eval_metrics = {f"eval_{k}": v for k, v in results["model"].items()}
    model_id = registry.log_model(client, run, spec, ctx.params.knobs(), eval_metrics, eval_split)
    name = ctx.params.register.model_name
    version = registry.register(
        client, name, model_id, {registry.SHA_TAG: sha, "pipeline.data_sha256": prepared.sha256}
    )
    registry.move_alias(
        client, ctx.uri, name, registry.CHALLENGER, version.version, f"new version from run {run.run_id}"
    )
    return version


def _repair_challenger(ctx: Context, client: Any, version: str) -> None:
    """Point @challenger at `version` if it is newer than @challenger's: a registration killed before moving it."""
    name = ctx.params.register.model_name
    challenger = registry.alias_version(client, name, registry.CHALLENGER)
    if challenger is None or int(challenger.version) < int(version):
        why = f"v{version} was registered but never made challenger (its registration was cut short)"
        registry.move_alias(client, ctx.uri, name, registry.CHALLENGER, version, why)


def _decide(
    ctx: Context, client: Any, version: str, results: dict, prepared: Prepared, model_path: Path
) -> gate.Decision:
    """Gate `version`: against the baseline always, and against the champion re-scored on the same rows."""
    from pipeline.scoring import FeatureMismatch, score_checkpoint, score_version

    p = ctx.params.register
    model, baseline = results["model"][p.metric], results["baseline"][p.metric]
    champion = registry.alias_version(client, p.model_name, registry.CHAMPION)
    if champion is None:
        return gate.decide(p.metric, model, baseline, p.tolerance)
    if str(champion.version) == version:
        why = f"v{version} is already the champion"
        return gate.Decision(True, why, p.metric, model, baseline, p.tolerance, champion_version=version)
    try:
        champion_scores = score_version(client, p.model_name, str(champion.version), prepared)
    except FeatureMismatch:
        why = (
            f"champion v{champion.version} takes other features than this data's: not comparable; "
            "register models for this data under another register.model_name"
        )
        return gate.Decision(False, why, p.metric, model, baseline, p.tolerance, champion_version=str(champion.version))
    challenger = score_checkpoint(model_path, prepared)
    thresholds = (challenger.threshold, champion_scores.threshold)
    evidence = gate.paired_evidence(
        p.metric, prepared.y_test, challenger.proba, champion_scores.proba, thresholds, p.level, p.resamples, p.seed
    )
    return gate.decide(p.metric, model, baseline, p.tolerance, evidence, str(champion.version))


def _evidence(decision: gate.Decision, run_id: str) -> dict[str, Any]:
    """The few numbers a reader of the history needs, and where the whole decision is."""
    summary: dict[str, Any] = {"metric": decision.metric, "model": decision.model, "baseline": decision.baseline}
    if decision.evidence is not None:
        e = decision.evidence
        summary.update(champion=decision.champion_version, delta=e.delta, low=e.low, high=e.high, n=e.n)
        summary.update(level=e.level, method=e.method)
    return {**summary, "decision": f"runs:/{run_id}/gate/decision.json"}


def _summary_tags(decision: gate.Decision, run_id: str) -> dict[str, str]:
    """The gate's decision, summarised as model version tags."""
    tags = {
        "gate.decision": "promoted" if decision.promote else "not promoted",
        "gate.reason": decision.reason[:4000],
        "gate.metric": decision.metric,
        "gate.model": f"{decision.model:.6f}",
        "gate.baseline": f"{decision.baseline:.6f}",
        "gate.evidence": f"runs:/{run_id}/gate/decision.json",
    }
    if decision.evidence is not None:
        e = decision.evidence
        tags.update(
            {
                "gate.champion": f"v{decision.champion_version}",
                "gate.delta": f"{e.delta:+.6f}",
                "gate.interval": f"[{e.low:+.6f}, {e.high:+.6f}] at {e.level:.0%} ({e.method})",
                "gate.n": str(e.n),
            }
        )
    return tags
