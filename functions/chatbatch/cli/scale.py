"""``chatbatch scale``: what ``scale.target_jobs_per_s`` makes of the config
(``chatbatch.core.scale``): the shards of each hot DynamoDB item, the event source
mappings' concurrency and the reserved concurrency the stack deploys, the AWS quotas to
raise first, and the modelled ceiling with what sets it. Read from the config alone: no
deployment is needed, so it can be checked before ``cdk deploy``."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Any

import typer
from rich.table import Table

from chatbatch.cli.output import out, say, warn
from chatbatch.cli.params import ConfigOpt, JsonOpt
from chatbatch.core.config import Config, Priority, load_config
from chatbatch.core.scale import Ceiling, ScalePlan, ceilings, deployment_ceiling, plan
from chatbatch.core.sizing import Sizing, worker_sizing


def scale(
    config: ConfigOpt = None,
    target: Annotated[
        float | None,
        typer.Option(
            "--target", min=0.001, help="jobs/s to plan for instead of scale.target_jobs_per_s"
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """The scale plan of the config: shards, concurrency, quotas to raise, the ceiling."""
    cfg = load_config(config)
    if target is not None:
        update = {"target_jobs_per_s": target}
        cfg = cfg.model_copy(update={"scale": cfg.scale.model_copy(update=update)})
    scale_plan = plan(cfg)
    sizing = scale_plan.worker or worker_sizing(cfg)
    rows = ceilings(cfg, scale_plan)
    if as_json:
        typer.echo(json.dumps(_document(cfg, scale_plan, sizing, rows), indent=2))
        return
    _show(cfg, scale_plan, sizing, rows)


def _document(cfg: Config, p: ScalePlan, sizing: Sizing, rows: list[Ceiling]) -> dict[str, Any]:
    lowest = deployment_ceiling(rows)
    return {
        "target_jobs_per_s": p.target_jobs_per_s,
        "answer_s": cfg.scale.answer_s,
        "shards": {
            "ledger": p.ledger_shards,
            "markers": p.marker_shards,
            "counters": p.counter_shards,
            "limiter": {m: p.limiter(m) for m in cfg.models},
        },
        "worker": {
            "concurrency_needed": sizing.concurrency,
            "mapping_concurrency": {pr.value: sizing.mappings[pr] for pr in Priority},
            "reserved_concurrency": sizing.reserved,
        },
        "quotas": [{**asdict(q), "raise": q.raise_needed} for q in sizing.quotas],
        "ceilings": [asdict(c) for c in rows],
        "ceiling": {"jobs_per_s": lowest.jobs_per_s, "set_by": lowest.limit},
        "models_rpm_jobs_per_s": _models_rate(cfg),
    }


def _models_rate(cfg: Config) -> float:
    """What the providers let through: every model at its configured rpm."""
    return sum(m.rpm for m in cfg.models.values()) / 60


def _show(cfg: Config, p: ScalePlan, sizing: Sizing, rows: list[Ceiling]) -> None:
    if p.target_jobs_per_s is None:
        say(
            "no scale.target_jobs_per_s: one item per hot kind, the mappings as configured, "
            "nothing reserved (plan for a rate with --target JOBS_PER_S)"
        )
    else:
        say(
            f"target {p.target_jobs_per_s:,g} jobs/s, answers of {cfg.scale.answer_s:g} s "
            f"(scale.answer_s), batches of {cfg.worker.batch_size}: "
            f"{sizing.concurrency:,} invocations at once (twice what typical answers need)"
        )
    shards = Table(title="hot DynamoDB items")
    for name in ("item", "shards"):
        shards.add_column(name, justify="left" if name == "item" else "right")
    shards.add_row("day's and a batch's budget ledger", str(p.ledger_shards))
    shards.add_row("open markers' partition", str(p.marker_shards))
    shards.add_row("a batch's counters", str(p.counter_shards))
    for m in cfg.models:
        shards.add_row(f"limiter {m}", str(p.limiter(m)))
    out.print(shards)
    worker = Table(title="event source mappings (MaximumConcurrency)")
    for name in ("priority", "configured", "deployed"):
        worker.add_column(name, justify="left" if name == "priority" else "right")
    for pr in Priority:
        worker.add_row(pr.value, str(cfg.priorities[pr].max_concurrency), str(sizing.mappings[pr]))
    out.print(worker)
    say(
        f"reserved concurrency: {sizing.reserved:,}"
        if sizing.reserved is not None
        else "reserved concurrency: none (the account's unreserved pool)"
    )
    if sizing.quotas:
        quotas = Table(title="AWS quotas (default / needed)")
        for name in ("quota", "default", "needed", "raise", "why"):
            quotas.add_column(name, justify="right" if name in ("default", "needed") else "left")
        for q in sizing.quotas:
            quotas.add_row(
                q.name, f"{q.default:,}", f"{q.needed:,}", "yes" if q.raise_needed else "no", q.note
            )
        out.print(quotas)
    limits = Table(title="modelled ceilings (jobs/s)")
    for name in ("limit", "jobs/s", "from"):
        limits.add_column(name, justify="right" if name == "jobs/s" else "left")
    for c in rows:
        mark = "" if c.binds else " (its model's rpm is lower)"
        limits.add_row(c.limit + mark, f"{c.jobs_per_s:,.0f}", c.detail)
    out.print(limits)
    lowest = deployment_ceiling(rows)
    say(f"modelled ceiling: {lowest.jobs_per_s:,.0f} jobs/s, set by {lowest.limit}")
    say(
        f"the models' rpm (models.*.rpm) let {_models_rate(cfg):,.1f} jobs/s through "
        "together: the providers' limits, not the deployment's"
    )
    if p.target_jobs_per_s is not None and lowest.jobs_per_s < p.target_jobs_per_s:
        warn(
            f"the target ({p.target_jobs_per_s:,g} jobs/s) is above the modelled ceiling: "
            "see docs/scale.md for what to change"
        )
