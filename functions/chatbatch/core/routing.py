"""Which route a job takes: a synchronous call now, or its provider's own batch API at the
batch prices (issue 17).

A provider's batch API answers within 24 hours (OpenAI's ``completion_window`` is
``24h``, Anthropic's Message Batches end within 24 hours) at about half the price, so a
job goes to batch only when it may wait that long: its deadline (its line's
``deadline_h``, else its priority's ``[priorities.P] deadline_h``; 0 or unset: as soon as
possible) is at least ``BATCH_WINDOW_H``, its model has a ``batch_api``, and the batch
API takes its request as the synchronous path would send it. Both providers' batch APIs
refuse streaming (OpenAI: ``stream`` is not supported in a batch; Anthropic: "streaming
is not supported for requests in a batch"); anything else a job may carry (``n`` > 1,
tools, JSON schemas, content parts) the batch endpoints take as the synchronous ones do
(``n`` > 1 never reaches Anthropic: submit refuses it for a kind anthropic model).

``route`` decides for one job under the submit's override: ``auto`` (the rule above),
``sync`` (everything synchronous, as before issue 17) or ``batch`` (every job, and a job
that cannot go is a ``JobError`` naming it and the field).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from chatbatch.core.config import Config, Priority
from chatbatch.core.jobs import Job, JobError

RouteKind = Literal["sync", "batch"]
Override = Literal["sync", "batch", "auto"]
ROUTE_KINDS: tuple[RouteKind, ...] = ("sync", "batch")
BATCH_WINDOW_H = 24.0  # the providers' batch APIs answer within this many hours


@dataclass(frozen=True)
class Route:
    """Where a job goes, and in a few words why."""

    kind: RouteKind
    reason: str


def deadline_of(job: Job, config: Config, default_priority: Priority | None = None) -> float:
    """The hours ``job`` may take: its own ``deadline_h``, else its priority's (the job's,
    else ``default_priority``, else the config's default); 0 is as soon as possible."""
    if job.deadline_h is not None:
        return job.deadline_h
    priority = job.priority or default_priority or config.defaults.priority
    return config.priorities[priority].deadline_h


def batch_refusal(job: Job, config: Config) -> tuple[str, str] | None:
    """(field, why) when ``job`` cannot go through a batch API: its model has none, or
    its request streams. None when it can."""
    model = config.models[job.model]
    if model.batch_api is None:
        return (
            "model",
            f"model {job.model} has no batch API (models.{job.model}.batch_api is unset)",
        )
    native = job.native_params or {}
    if job.stream or native.get("stream"):
        field = "params.stream" if job.native_params is not None else "stream"
        why = f"the request streams (stream: true), which {model.batch_api}'s batch API does not"
        return field, why
    return None


def route(
    job: Job,
    config: Config,
    override: Override = "auto",
    *,
    default_priority: Priority | None = None,
) -> Route:
    """The route of ``job`` under ``override``; raises ``JobError`` (naming the job and
    the field) for an override ``batch`` the job cannot take."""
    if override == "sync":
        return Route("sync", "--route sync")
    refused = batch_refusal(job, config)
    if override == "batch":
        if refused is not None:
            field, why = refused
            raise JobError(
                field,
                f"--route batch, but {why}: it can only be sent synchronously (use --route "
                "auto or sync)",
                custom_id=job.custom_id,
            )
        return Route("batch", "--route batch")
    if refused is not None:
        return Route("sync", refused[1])
    deadline = deadline_of(job, config, default_priority)
    if deadline < BATCH_WINDOW_H:
        soon = "as soon as possible" if not deadline else f"within {deadline:g} h"
        return Route("sync", f"its deadline is {soon}, under the batch APIs' 24 h")
    return Route("batch", f"its deadline of {deadline:g} h allows the batch API's 24 h")
