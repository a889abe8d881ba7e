"""A job: one chat request, resolved and ready to run, and what carries it.

A job line (``chatbatch.core.job_lines``) normalises to one ``Job``, resolved against
the config (role -> model, system prompt and defaults). The same JSON is the SQS message
body, so any producer can drop a job straight onto a priority queue. A job too large for
an SQS message travels as a ``ClaimCheck`` pointing at an S3 object.
"""

from __future__ import annotations

import hashlib
import json
import re
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from chatbatch.core.config import Model, Priority
from chatbatch.core.messages import Message
from chatbatch.core.pricing import (
    Usage,
    cost,
    estimate_prompt_tokens,
    prompt_token_bound,
    worst_case_prompt,
    writes_one_hour,
)

SQS_MAX_BYTES = 256 * 1024
CHAT_URL = "/v1/chat/completions"
CUSTOM_ID_MAX_CHARS = 512
# a custom_id made only of these, at most 200 characters, is its own key (see ``id_key``)
KEY_SAFE_ID = re.compile(r"[A-Za-z0-9._:=+@,-]{1,200}")
HASHED_ID_PREFIX = "~"  # any other custom_id's key: this and its SHA-256
BATCH_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"


# OpenAI's rule: any string of 1-512 characters, unique in its batch
CustomId = Annotated[StrictStr, Field(min_length=1, max_length=CUSTOM_ID_MAX_CHARS)]


def is_custom_id(value: Any) -> bool:
    """Whether ``value`` is a custom_id (a string of 1-512 characters)."""
    return isinstance(value, str) and 1 <= len(value) <= CUSTOM_ID_MAX_CHARS


def id_key(custom_id: str) -> str:
    """A custom_id as it appears in S3 and DynamoDB keys (stable, never changes for an id).

    An id of at most 200 characters from ``A-Za-z0-9._:=+@,-`` is its own key, so keys
    stay readable (and every id the earlier rule accepted keeps its key). Any other id
    (``request 1``, ``task/1``, unicode, up to 512 characters) is ``~`` and the SHA-256
    hex digest of its UTF-8 bytes: ``~`` is never in the first form, so no two ids share
    a key. Results and errors always carry the original custom_id.
    """
    if KEY_SAFE_ID.fullmatch(custom_id):
        return custom_id
    return HASHED_ID_PREFIX + hashlib.sha256(custom_id.encode()).hexdigest()


def job_ref(batch_id: str, custom_id: str) -> str:
    """A job's name in shared-state keys (its budget reservation): batch and ``id_key``."""
    return f"{batch_id}#{id_key(custom_id)}"


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
        # the form of the line refused (``job_lines.line_form``), when it decoded to an object
        self.form: Literal["openai", "anthropic"] | None = None
        super().__init__(str(self))

    def __str__(self) -> str:
        where = [f"line {self.line}"] if self.line is not None else []
        if self.custom_id:
            where.append(f"job {self.custom_id!r}")
        prefix = ", ".join(where) + ": " if where else ""
        return f"{prefix}{self.field}: {self.message}"


class Job(BaseModel):
    """One chat request, resolved and ready to run. Its JSON is the SQS message body."""

    model_config = ConfigDict(frozen=True)

    custom_id: str
    batch_id: str | None = None
    seq: int | None = None
    model: str
    role: str | None = None
    priority: Priority | None = None
    # hours the job may take (its line's ``deadline_h``; None: its priority's)
    deadline_h: float | None = None
    messages: list[Message]
    max_tokens: int | None = None
    # the parameter the line gave its cap as: sent as given (None: the model's own)
    cap_param: Literal["max_tokens", "max_completion_tokens"] | None = None
    temperature: float | None = None
    stream: bool = False
    cache: bool = False
    metadata: dict[str, str] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    # the form of its line; an Anthropic-form job keeps its params as given
    # (``native_params``), the fields above hold them translated to a chat request
    form: Literal["openai", "anthropic"] = "openai"
    native_params: dict[str, Any] | None = None

    def output_cap(self, model: Model) -> int:
        """The output cap every call of this job is sent: its own, else the model's."""
        return self.max_tokens or model.reserve_max_tokens

    @property
    def choices(self) -> int:
        """``n``: the provider bills the output of every choice (the prompt once)."""
        n = self.params.get("n")
        return n if isinstance(n, int) and n > 0 else 1

    def output_bound(self, model: Model) -> int:
        """The most output tokens a call can be billed: the cap sent, times ``n``."""
        return self.output_cap(model) * self.choices

    def estimated_tokens(self, model: Model) -> int:
        """Prompt estimate plus the output bound: what the rate limiter takes up front (an
        Anthropic-form job's prompt read from its params as given)."""
        prompt = estimate_prompt_tokens(self.prompt_body(model), model.image_input_tokens or 0)
        return prompt + self.output_bound(model)

    def prompt_body(self, model: Model) -> dict[str, Any]:
        """The request as its line gave it: an Anthropic-form job's params, else the chat body."""
        return self.native_params if self.native_params is not None else self.request_body(model)

    def worst_case_usage(self, model: Model) -> Usage:
        """The most a call of this job can be billed: the bound of every billed prompt
        field, at the highest input price (uncached, or written to the cache when that
        costs more: the 1-hour write's when its params mark a block ``ttl = "1h"``), and
        the output cap sent times ``n``, all used."""
        bound = prompt_token_bound(self.request_body(model), model.image_input_tokens or 0)
        if self.native_params is not None:  # whichever body goes on the wire
            native = prompt_token_bound(self.native_params, model.image_input_tokens or 0)
            bound = max(bound, native)
        hour = writes_one_hour(self.native_params)  # an OpenAI-form job sends no ttl
        return worst_case_prompt(bound, self.output_bound(model), model, one_hour=hour)

    def worst_case_usd(self, model: Model) -> Decimal:
        """The most this job can cost (``worst_case_usage`` at the model's prices)."""
        return cost(self.worst_case_usage(model), model)

    def _body(self, model: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": [m.to_api() for m in self.messages],
            **self.params,
        }
        if self.max_tokens is not None:
            body[self.cap_param or "max_tokens"] = self.max_tokens
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.stream:
            body["stream"] = True
        return body

    def request_body(self, model: Model) -> dict[str, Any]:
        """The /v1/chat/completions body sent to the provider: the line's body as given. It
        always carries the output cap (``output_cap``), under the parameter the line gave
        (``cap_param``), else the one the model accepts (``Model.cap_param``), so the
        provider never applies its own."""
        body = self._body(model.model_id)
        body.pop(self.cap_param or "max_tokens", None)
        body[self.cap_param or model.cap_param] = self.output_cap(model)
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def cache_key(self, model: Model) -> str:
        """Identical requests (same model, messages, parameters and cap) share a key; an
        Anthropic-form job's request is its params as given (with the model and cap)."""
        body = dict(self.prompt_body(model))
        body |= {"model": model.model_id, "cap": self.output_cap(model)}
        body.pop("stream", None)
        body.pop("stream_options", None)
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_line(self) -> str:
        """The job as its form's batch line (an OpenAI Batch line, or an Anthropic one with
        its params as given), plus chatbatch keys; ``parse_job`` reads it back."""
        line: dict[str, Any] = {"custom_id": self.custom_id}
        if self.native_params is None:
            line |= {"method": "POST", "url": CHAT_URL}
        line |= self.model_dump(
            include={"batch_id", "seq", "role", "priority", "cache", "metadata", "deadline_h"},
            exclude_defaults=True,
            mode="json",
        )
        if self.native_params is None:
            line["body"] = self._body(self.model)
        else:
            line["params"] = self.native_params
        return json.dumps(line, separators=(",", ":"), ensure_ascii=False)


CLAIM_CHECK_KEY = "chatbatch_claim_check"
# The SQS message attribute that carries a job's batch when its line names none: set by a
# worker's hand-back and by ``chatbatch retry`` (a default batch is the day first sent).
ATTR_BATCH = "chatbatch-batch"


def claim_key(batch_id: str, custom_id: str) -> str:
    """Where a job's claim check is stored: the only key a claim for it may name."""
    return f"claims/{batch_id}/{id_key(custom_id)}.json"


class ClaimCheck(BaseModel):
    """A job stored in S3 because it is over ``SQS_MAX_BYTES``.

    The SQS body is then ``{"chatbatch_claim_check": {...}}`` and the S3 object holds
    the job line. The claim names the job: its ``custom_id`` and ``batch_id`` are the
    job's, and the stored line may leave them out, but may not name another job.
    """

    bucket: StrictStr
    key: StrictStr
    custom_id: CustomId
    batch_id: str | None = Field(default=None, pattern=BATCH_ID_PATTERN)

    def of_batch(self, batch_id: str) -> ClaimCheck:
        """The claim in its job's batch (the message's when the claim names none), its
        key checked: only the job's own claim object, ``claims/{batch}/{custom_id}.json``,
        is read (``claim_key``); any other key (another batch's claim, a result, a manifest) is a
        ``JobError`` before anything is read."""
        expected = claim_key(batch_id, self.custom_id)
        if self.key != expected:
            raise JobError(
                f"{CLAIM_CHECK_KEY}.key",
                f"{self.key!r} is not this job's claim: a claim check for job "
                f"{self.custom_id!r} of batch {batch_id!r} must name {expected!r}",
            )
        return self.model_copy(update={"batch_id": batch_id})

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
