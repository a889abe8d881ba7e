"""Results out: output and error lines, and cost records.

The lines have OpenAI's Batch output shape; chatbatch's own facts sit under a separate
``chatbatch`` key so OpenAI tooling reads the lines unchanged. A line with a ``response``
(an answer, or the provider's HTTP error answer: ``status_code``, its ``x-request-id``,
its body as sent) belongs in the results file; a line with an ``error`` (a failure that
never got an HTTP answer: ``code``, ``message``) in the error file (``is_result``).
Money is written as exact decimal strings.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, Field, field_serializer

from chatbatch.core.config import Model, Priority
from chatbatch.core.jobs import Job
from chatbatch.core.pricing import Usage, from_nanos


def request_id(batch_id: str, custom_id: str) -> str:
    return "batch_req_" + hashlib.sha256(f"{batch_id}\0{custom_id}".encode()).hexdigest()[:24]


class BatchResponse(BaseModel):
    """The provider's HTTP answer: its status, ``x-request-id`` and body."""

    status_code: int
    request_id: str
    body: dict[str, Any]


class BatchError(BaseModel):
    code: str
    message: str


class JobFacts(BaseModel):
    """chatbatch's own facts about a finished job, beside the OpenAI-shaped line."""

    batch_id: str
    priority: Priority
    model: str
    role: str | None = None
    cost_usd: Decimal = Decimal(0)
    latency_ms: int = 0
    attempts: int = 0
    cached: bool = False
    seq: int | None = None
    day: str | None = None  # UTC day the result was made: its cost record's partition
    usage_estimated: bool = False  # the answer came without usage: cost is the worst case
    booked_usage: Usage | None = None  # with usage_estimated: the usage booked (worst case)

    @field_serializer("cost_usd")
    def _usd(self, value: Decimal) -> str:
        return str(value)


class OutputLine(BaseModel):
    """An answer or the provider's HTTP error answer (``response`` set), or a failure
    without an HTTP answer (``error`` set), in OpenAI Batch output shape."""

    id: str
    custom_id: str
    response: BatchResponse | None = None
    error: BatchError | None = None
    chatbatch: JobFacts | None = None

    @property
    def is_result(self) -> bool:
        """Whether the line goes in the results file (it has an HTTP answer)."""
        return self.response is not None

    @classmethod
    def result(
        cls, job: Job, facts: JobFacts, body: dict[str, Any], request: str | None = None
    ) -> OutputLine:
        """A job's answer (HTTP 200); ``request``: the answer's ``x-request-id``."""
        return cls.answered(facts.batch_id, job.custom_id, 200, body, request, facts)

    @classmethod
    def answered(
        cls,
        batch_id: str,
        custom_id: str,
        status: int,
        body: dict[str, Any],
        request: str | None,
        facts: JobFacts | None = None,
    ) -> OutputLine:
        """A line carrying the provider's HTTP answer, its body as sent. ``request`` is
        its ``x-request-id``; when it had none (or the answer came from the response
        cache), the line's own id stands in."""
        rid = request_id(batch_id, custom_id)
        return cls(
            id=rid,
            custom_id=custom_id,
            response=BatchResponse(status_code=status, request_id=request or rid, body=body),
            chatbatch=facts,
        )

    @classmethod
    def failure(
        cls, batch_id: str, custom_id: str, code: str, message: str, facts: JobFacts | None = None
    ) -> OutputLine:
        return cls(
            id=request_id(batch_id, custom_id),
            custom_id=custom_id,
            error=BatchError(code=code, message=message),
            chatbatch=facts,
        )

    def to_line(self) -> str:
        return self.model_dump_json()


class CostRecord(BaseModel):
    """One line under ``costs/dt=YYYY-MM-DD/`` (JSON lines, flat, Athena-friendly)."""

    ts: str
    dt: str
    batch_id: str
    custom_id: str
    priority: Priority
    model: str
    model_id: str
    provider: str
    role: str | None = None
    prompt_tokens: int
    cached_tokens: int
    # prompt tokens written to the provider's cache (Anthropic), priced at cache_write_per_m
    cache_write_tokens: int = 0
    # of them, those written to the 1-hour cache, priced at cache_write_1h_per_m
    cache_write_1h_tokens: int = 0
    completion_tokens: int
    reasoning_tokens: int
    cost_nanos: int
    cost_usd: Decimal
    cached: bool = False
    # the usage never came back (an answer cut, unread or without usage): the tokens and
    # cost are the call's worst case, booked because the provider may have billed it
    usage_estimated: bool = False
    # a call whose answer was never read has its own record: its reservation's id
    attempt: str | None = None
    # the job's own ``metadata`` (bounded at intake: 16 keys of 64, values of 512
    # characters), for attribution: ``costs --by metadata.KEY``; absent in older records
    metadata: dict[str, str] = Field(default_factory=dict)
    # how the job went: a synchronous call, or its provider's batch API at the batch prices
    route: Literal["sync", "batch"] = "sync"

    @field_serializer("cost_usd")
    def _usd(self, value: Decimal) -> str:
        return str(value)

    @classmethod
    def of(
        cls,
        job: Job,
        model: Model,
        *,
        batch_id: str,
        priority: Priority,
        usage: Usage,
        nanos: int,
        day: str,
        **facts: Any,
    ) -> CostRecord:
        """``job``'s record: ``usage`` at ``nanos`` on ``day``'s partition (``facts``:
        ``cached``, ``usage_estimated``, ``attempt``, ``route``)."""
        return cls(
            ts=dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            dt=day,
            batch_id=batch_id,
            custom_id=job.custom_id,
            priority=priority,
            model=job.model,
            model_id=model.model_id,
            provider=model.provider,
            role=job.role,
            prompt_tokens=usage.prompt_tokens,
            cached_tokens=usage.cached_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            cache_write_1h_tokens=usage.cache_write_1h_tokens,
            completion_tokens=usage.completion_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cost_nanos=nanos,
            cost_usd=from_nanos(nanos),
            metadata=job.metadata,
            **facts,
        )
