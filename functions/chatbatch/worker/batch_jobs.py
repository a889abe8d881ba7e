"""Jobs through a provider's batch API, on the worker's own terms: each job's line carries
the request body the synchronous path sends (``translate.wire_body``), and each answer is
stored as the synchronous path stores it (``translate.result_body``: an Anthropic Message
becomes a chat.completion for an OpenAI-form job). The provider layer
(``provider.batch_api``) sends and reads what it is given; this is where the two meet, so
a job routed to batch gets the same request, and leaves the same result, as a synchronous
one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import replace

from chatbatch.core.config import Config
from chatbatch.core.jobs import Job
from chatbatch.provider.batch_api import BatchPart, JobOutcome, provider_custom_id, split
from chatbatch.translate import result_body, wire_body


def batch_parts(jobs: Iterable[Job], config: Config) -> list[BatchPart]:
    """The provider batches ``jobs`` go in, each line's body the synchronous request's."""

    def bodies() -> Iterable[tuple[Job, dict[str, object]]]:
        for job in jobs:
            model = config.models[job.model]
            yield job, wire_body(job, model, config.providers[model.provider])

    return split(bodies(), config)


def stored(
    outcome: JobOutcome, part: BatchPart, config: Config, created: int | None = None
) -> JobOutcome:
    """``outcome`` with its answer as a synchronous job's result stores it (``created``:
    the Unix time a translated Message is stamped with, now by default)."""
    if outcome.kind != "succeeded" or outcome.body is None:
        return outcome
    job = part.jobs[provider_custom_id(outcome.batch_id, outcome.custom_id)]
    provider = config.providers[config.models[job.model].provider]
    when = int(time.time()) if created is None else created
    return replace(outcome, body=result_body(job, outcome.body, provider, when))
