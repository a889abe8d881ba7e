"""Provider batch files from jobs: each job's line around the request body it is given
(the worker gives the body it sends synchronously: ``worker.batch_jobs``), and the split
into provider batches within each API's limits.

- OpenAI (Batch API guide): an input file of at most 50,000 requests and 200 MB, every
  line for one model (a file mixing models fails ``mismatched_model``); a line is
  ``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}``.
- Anthropic (Message Batches): at most 100,000 requests and 256 MB in one create request
  ``{"requests": [{"custom_id", "params"}, ...]}``; models may be mixed.

Jobs are grouped by provider (a provider batch lives at one provider's URL, under one
key) and, at OpenAI, by model; each group is cut, in input order, into parts that keep
within ``LIMITS`` (read when splitting, so a test can lower them).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from chatbatch.core.config import Config
from chatbatch.core.jobs import CHAT_URL, Job
from chatbatch.provider.batch_api.common import BatchApiKind, BatchPart, BatchRequest
from chatbatch.provider.batch_api.custom_ids import provider_custom_id

MB = 1024 * 1024
ANTHROPIC_ENVELOPE = len(b'{"requests":[]}')


@dataclass(frozen=True)
class Limits:
    """The most one provider batch may hold."""

    requests: int
    bytes: int


LIMITS: dict[BatchApiKind, Limits] = {
    "openai": Limits(requests=50_000, bytes=200 * MB),
    "anthropic": Limits(requests=100_000, bytes=256 * MB),
}


class TooLarge(ValueError):
    """A job whose line alone is over its API's byte limit: it cannot go in any batch."""


def batch_line(job: Job, body: dict[str, Any], config: Config) -> dict[str, Any]:
    """The job's line in its model's batch API, carrying ``body`` under the job's provider
    custom_id. ValueError for a job whose model has no ``batch_api`` or that names no batch."""
    model = config.models[job.model]
    if model.batch_api is None:
        raise ValueError(f"job {job.custom_id!r}: model {job.model} has no batch_api")
    if job.batch_id is None:
        raise ValueError(f"job {job.custom_id!r} names no batch: its result would have no home")
    key = provider_custom_id(job.batch_id, job.custom_id)
    if model.batch_api == "openai":
        return {"custom_id": key, "method": "POST", "url": CHAT_URL, "body": body}
    return {"custom_id": key, "params": body}


def batch_request(job: Job, body: dict[str, Any], config: Config) -> BatchRequest:
    return request_of(job, batch_line(job, body, config))


def request_of(job: Job, line: dict[str, Any]) -> BatchRequest:
    """``job`` under its batch ``line`` (as built, or read back from a part's file)."""
    # a file line ends in a newline; a request in Anthropic's list is followed by a comma
    size = len(json.dumps(line, separators=(",", ":")).encode()) + 1
    return BatchRequest(key=line["custom_id"], job=job, line=line, size=size)


def split(jobs: Iterable[tuple[Job, dict[str, Any]]], config: Config) -> list[BatchPart]:
    """The provider batches ``jobs`` (each with its request body) go in: per provider (and
    model, at OpenAI), in input order, each within ``LIMITS``. Raises ``TooLarge`` for a job
    over the byte limit alone."""
    open_parts: dict[tuple[str, str | None], BatchPart] = {}
    done: list[BatchPart] = []
    for job, body in jobs:
        request = batch_request(job, body, config)
        model = config.models[job.model]
        api = model.batch_api
        assert api is not None  # batch_line checked it
        limits = LIMITS[api]
        envelope = ANTHROPIC_ENVELOPE if api == "anthropic" else 0
        if request.size + envelope > limits.bytes:
            raise TooLarge(
                f"job {job.custom_id!r} of batch {job.batch_id!r}: its {api} batch line is "
                f"{request.size} bytes, over the {limits.bytes} a provider batch may hold"
            )
        group = (model.provider, model.model_id if api == "openai" else None)
        part = open_parts.get(group)
        if part is not None and (
            len(part.requests) >= limits.requests
            or part.size + request.size + envelope > limits.bytes
        ):
            done.append(part)
            part = None
        if part is None:
            part = open_parts[group] = BatchPart(api=api, provider=model.provider, model=group[1])
        part.add(request)
    return done + list(open_parts.values())
