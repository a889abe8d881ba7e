"""A job: one chat request, resolved and ready to run, and what carries it.

A job line (``chatbatch.core.job_lines``) normalises to one ``Job``, resolved against
the config (role -> model, system prompt and defaults). The same JSON is the SQS message
body, so any producer can drop a job straight onto a priority queue. A job too large for
an SQS message travels as a ``ClaimCheck`` pointing at an S3 object.
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from chatbatch.core.config import Model, Priority
from chatbatch.core.pricing import estimate_prompt_tokens, prompt_token_bound, worst_case_cost

SQS_MAX_BYTES = 256 * 1024
CHAT_URL = "/v1/chat/completions"
ID_PATTERN = r"^[A-Za-z0-9._:=+@,-]{1,200}$"
BATCH_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
MESSAGE_ROLES = ("system", "developer", "user", "assistant", "tool")


class JobError(ValueError):
    """A job that cannot run. Names the line (or job) and the field, says what to do."""

    code = "invalid_job"

    def __init__(
        self, field: str, message: str, *, line: int | None = None, custom_id: str | None = None
    ) -> None:
        self.field = field
        self.message = message
        self.line = line
        self.custom_id = custom_id
        super().__init__(str(self))

    def __str__(self) -> str:
        where = [f"line {self.line}"] if self.line is not None else []
        if self.custom_id:
            where.append(f"job {self.custom_id!r}")
        prefix = ", ".join(where) + ": " if where else ""
        return f"{prefix}{self.field}: {self.message}"


class LineModel(BaseModel):
    """A part of a job line: an unknown key is an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


class Message(LineModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr
    name: StrictStr | None = None
    tool_call_id: StrictStr | None = None


class Job(BaseModel):
    """One chat request, resolved and ready to run. Its JSON is the SQS message body."""

    model_config = ConfigDict(frozen=True)

    custom_id: str
    batch_id: str | None = None
    seq: int | None = None
    model: str
    role: str | None = None
    priority: Priority | None = None
    messages: list[Message]
    max_tokens: int | None = None
    temperature: float | None = None
    stream: bool = False
    cache: bool = False
    metadata: dict[str, str] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)

    def output_cap(self, model: Model) -> int:
        return self.max_tokens or model.reserve_max_tokens

    def estimated_prompt_tokens(self) -> int:
        return estimate_prompt_tokens(m.content for m in self.messages)

    def estimated_tokens(self, model: Model) -> int:
        """Prompt estimate plus the output cap: what the rate limiter takes up front."""
        return self.estimated_prompt_tokens() + self.output_cap(model)

    def worst_case_usd(self, model: Model) -> Decimal:
        """The most this job can cost: the byte bound of the prompt plus the output cap."""
        bound = prompt_token_bound(m.content for m in self.messages)
        return worst_case_cost(bound, self.output_cap(model), model)

    def _body(self, model: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": [m.model_dump(exclude_none=True) for m in self.messages],
            **self.params,
        }
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.stream:
            body["stream"] = True
        return body

    def request_body(self, model: Model) -> dict[str, Any]:
        """The /v1/chat/completions body sent to the provider."""
        body = self._body(model.model_id)
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def cache_key(self, model: Model) -> str:
        """Identical requests (same model, messages and parameters) share a key."""
        body = self._body(model.model_id)
        body.pop("stream", None)
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_line(self) -> str:
        """The job as an OpenAI Batch line (plus chatbatch keys); ``parse_job`` reads it back."""
        line: dict[str, Any] = {"custom_id": self.custom_id, "method": "POST", "url": CHAT_URL}
        line |= self.model_dump(
            include={"batch_id", "seq", "role", "priority", "cache", "metadata"},
            exclude_defaults=True,
            mode="json",
        )
        line["body"] = self._body(self.model)
        return json.dumps(line, separators=(",", ":"), ensure_ascii=False)


CLAIM_CHECK_KEY = "chatbatch_claim_check"


class ClaimCheck(BaseModel):
    """A job stored in S3 because it is over ``SQS_MAX_BYTES``.

    The SQS body is then ``{"chatbatch_claim_check": {...}}`` and the S3 object holds
    the job line. The claim names the job: its ``custom_id`` and ``batch_id`` are the
    job's, and the stored line may leave them out, but may not name another job.
    """

    bucket: StrictStr
    key: StrictStr
    custom_id: str = Field(pattern=ID_PATTERN)
    batch_id: str | None = Field(default=None, pattern=BATCH_ID_PATTERN)

    def fill(self, data: Any) -> Any:
        """The stored job line with the claim's ids: one the line leaves out is the
        claim's; one it names differently is a ``JobError`` (which job would it be?)."""
        if not isinstance(data, dict):
            return data  # not a job line: ``parse_job`` says so
        filled = dict(data)
        for name, claimed in (("custom_id", self.custom_id), ("batch_id", self.batch_id)):
            stored = data.get(name)
            if claimed is None or stored == claimed:
                continue
            if stored is not None:
                raise JobError(
                    f"{CLAIM_CHECK_KEY}.{name}",
                    f"the claim check names {claimed!r} but s3://{self.bucket}/{self.key} "
                    f"holds a job with {name} {stored!r}; send a claim check with the "
                    "stored job's ids (or store the job under the claim's)",
                )
            filled[name] = claimed
        return filled
