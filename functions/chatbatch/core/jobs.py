"""Jobs in, results out: the JSONL line formats and the models behind them.

A job line is either an OpenAI Batch API line
``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body": {...}}``
or the short form
``{"custom_id"?, "model"?, "role"?, "messages" | "prompt", "max_tokens"?, ...}``.
Both normalise to one ``Job``, resolved against the config (role -> model, system
prompt and defaults). The same JSON is the SQS message body, so any producer can drop
a job straight onto a priority queue. A job too large for an SQS message travels as a
``ClaimCheck`` pointing at an S3 object.

Result and error lines use the OpenAI Batch output shape; chatbatch's own facts sit
under a separate ``chatbatch`` key so OpenAI tooling reads the lines unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_serializer,
)

from chatbatch.core.config import ROLE_PARAMS, Config, Model, Priority
from chatbatch.core.pricing import estimate_prompt_tokens, prompt_token_bound, worst_case_cost

SQS_MAX_BYTES = 256 * 1024
CHAT_URL = "/v1/chat/completions"
ID_PATTERN = r"^[A-Za-z0-9._:=+@,-]{1,200}$"
BATCH_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
MESSAGE_ROLES = ("system", "developer", "user", "assistant", "tool")
PASS_THROUGH_PARAMS = ROLE_PARAMS - {"temperature", "max_tokens", "stream"}


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


class _Line(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Message(_Line):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr
    name: StrictStr | None = None
    tool_call_id: StrictStr | None = None


class _Common(_Line):
    """Keys both forms accept (chatbatch's own, beside OpenAI's)."""

    custom_id: str | None = Field(default=None, pattern=ID_PATTERN)
    batch_id: str | None = Field(default=None, pattern=BATCH_ID_PATTERN)
    priority: Priority | None = None
    role: StrictStr | None = None
    cache: StrictBool = False
    metadata: dict[str, StrictStr] = Field(default_factory=dict, max_length=16)
    seq: StrictInt | None = Field(default=None, ge=0)


class ChatBody(BaseModel):
    """A /v1/chat/completions request body. Unknown keys pass through to the provider."""

    model_config = ConfigDict(extra="allow")

    model: StrictStr | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    stream: StrictBool = False


class ShortLine(_Common):
    model: StrictStr | None = None
    messages: list[Message] | None = Field(default=None, min_length=1)
    prompt: StrictStr | None = Field(default=None, min_length=1)
    max_tokens: StrictInt | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    stream: StrictBool = False
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    response_format: dict[str, Any] | None = None


class BatchLine(_Common):
    method: Literal["POST"]
    url: Literal["/v1/chat/completions"]
    body: ChatBody


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
    the job line.
    """

    bucket: str
    key: str
    custom_id: str
    batch_id: str | None = None


def _field(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if part in {"ShortLine", "BatchLine"}:
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(line)"


_HINTS = {
    "extra_forbidden": "unknown field; remove it or check its spelling",
    "missing": "required field is missing",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "bool_type": "must be true or false",
    "float_type": "must be a number",
    "dict_type": "must be a JSON object",
    "list_type": "must be a list",
}


def _from_validation(err: ValidationError) -> tuple[str, str]:
    e = err.errors(include_url=False)[0]
    kind, ctx, value = e["type"], e.get("ctx") or {}, e.get("input")
    bounds = {
        "too_short": "must not be empty",
        "string_too_short": "must not be empty",
        "less_than_equal": f"must be at most {ctx.get('le')}",
        "greater_than_equal": f"must be at least {ctx.get('ge')}",
        "greater_than": f"must be greater than {ctx.get('gt')}",
        "string_pattern_mismatch": f"has characters or a length not allowed ({ctx.get('pattern')})",
    }
    if kind in bounds:
        msg = bounds[kind]
    elif kind in _HINTS:
        msg = _HINTS[kind]
    else:
        msg = e["msg"][0].lower() + e["msg"][1:]
    if kind != "missing" and not isinstance(value, dict | list):
        shown = repr(value)
        msg += f" (got {shown[:60]}{'...' if len(shown) > 60 else ''})"
    return _field(e["loc"]), msg


def _resolve(line: ShortLine | BatchLine, config: Config, seq: int | None) -> Job:
    if isinstance(line, BatchLine):
        body = line.body
        if body.max_tokens is not None and body.max_completion_tokens is not None:
            raise JobError("body.max_tokens", "give max_tokens or max_completion_tokens, not both")
        requested_model, messages = body.model, list(body.messages)
        max_tokens = body.max_tokens if body.max_tokens is not None else body.max_completion_tokens
        temperature, stream = body.temperature, body.stream
        params = dict(body.model_extra or {})
        prefix = "body."
    else:
        if line.messages is None and line.prompt is None:
            raise JobError("messages", "give messages (a list) or prompt (a string)")
        if line.messages is not None and line.prompt is not None:
            raise JobError("prompt", "give messages or prompt, not both")
        requested_model = line.model
        messages = list(line.messages or [Message(role="user", content=line.prompt or "")])
        max_tokens, temperature, stream = line.max_tokens, line.temperature, line.stream
        params = line.model_dump(include=set(PASS_THROUGH_PARAMS), exclude_none=True)
        prefix = ""

    role = config.roles.get(line.role) if line.role else None
    if line.role and role is None:
        raise JobError("role", f"unknown role {line.role!r}; configured: {sorted(config.roles)}")
    model_name = requested_model or (role.model if role else config.defaults.model)
    resolved = config.resolve_model(model_name)
    if resolved is None:
        raise JobError(
            f"{prefix}model", f"unknown model {model_name!r}; configured: {sorted(config.models)}"
        )
    name, model = resolved
    if role:
        if role.system_prompt and not any(m.role == "system" for m in messages):
            messages.insert(0, Message(role="system", content=role.system_prompt))
        preset = role.params
        max_tokens = preset.get("max_tokens") if max_tokens is None else max_tokens
        temperature = preset.get("temperature") if temperature is None else temperature
        stream = stream or bool(preset.get("stream", False))
        params = {k: v for k, v in preset.items() if k in PASS_THROUGH_PARAMS} | params
    if max_tokens is not None and not 0 < max_tokens <= model.max_output_tokens:
        raise JobError(
            f"{prefix}max_tokens",
            f"must be between 1 and {model.max_output_tokens} for {name} (got {max_tokens})",
        )
    return Job(
        custom_id=line.custom_id or f"line-{seq}",
        batch_id=line.batch_id,
        seq=line.seq if line.seq is not None else seq,
        model=name,
        role=line.role,
        priority=line.priority,
        messages=messages,
        max_tokens=max_tokens,
        temperature=temperature,
        stream=stream,
        cache=line.cache,
        metadata=line.metadata,
        params=params,
    )


def parse_job(data: Any, config: Config, *, seq: int | None = None) -> Job:
    """A decoded JSON value -> Job, or JobError naming the field."""
    if not isinstance(data, dict):
        raise JobError("(line)", f"must be a JSON object (got {type(data).__name__})")
    custom_id = data.get("custom_id") if isinstance(data.get("custom_id"), str) else None
    try:
        if "custom_id" not in data and seq is None:
            raise JobError("custom_id", "required for a job sent straight to a queue")
        kind = BatchLine if {"body", "url", "method"} & data.keys() else ShortLine
        line = kind.model_validate(data)
        return _resolve(line, config, seq)
    except ValidationError as err:
        field, msg = _from_validation(err)
        raise JobError(field, msg, custom_id=custom_id) from None
    except JobError as err:
        err.custom_id = err.custom_id or custom_id
        raise


def load_json(text: str | bytes, field: str) -> Any:
    """A job's JSON value; anything ``json`` refuses (bad syntax or encoding, 5,000-digit
    integers, nesting deep enough to recurse) is a JobError on ``field``."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError too
        raise JobError(field, f"not valid JSON: {str(err)[:200]}") from None


def parse_line(text: str | bytes, config: Config, *, line: int | None = None) -> Job:
    """One JSONL line -> Job. ``line`` (1-based) names the line in errors and is the seq."""
    size = len(text.encode() if isinstance(text, str) else text)
    try:
        if size > config.limits.max_line_bytes:
            raise JobError(
                "(line)",
                f"line is {size} bytes; the limit is {config.limits.max_line_bytes} "
                "(limits.max_line_bytes)",
            )
        return parse_job(load_json(text, "(line)"), config, seq=line)
    except JobError as err:
        err.line = line
        raise


def parse_lines(
    lines: Iterable[str | bytes], config: Config
) -> Iterator[tuple[int, Job | JobError]]:
    """Stream a JSONL file: (line number, Job or JobError) for every non-blank line.

    Duplicate custom_ids are reported on their second occurrence. Only the ids are kept
    in memory, never the jobs.
    """
    seen: set[str] = set()
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            job = parse_line(text, config, line=number)
        except JobError as err:
            yield number, err
            continue
        if job.custom_id in seen:
            yield (
                number,
                JobError(
                    "custom_id",
                    f"duplicate custom_id {job.custom_id!r}; each job in a file needs its own",
                    line=number,
                    custom_id=job.custom_id,
                ),
            )
            continue
        seen.add(job.custom_id)
        yield number, job


# --- Output lines ----------------------------------------------------------------------


def request_id(batch_id: str, custom_id: str) -> str:
    return "batch_req_" + hashlib.sha256(f"{batch_id}\0{custom_id}".encode()).hexdigest()[:24]


class BatchResponse(BaseModel):
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

    @field_serializer("cost_usd")
    def _usd(self, value: Decimal) -> float:
        return float(value)


class OutputLine(BaseModel):
    """A result (``response`` set) or an error (``error`` set), in OpenAI Batch output shape."""

    id: str
    custom_id: str
    response: BatchResponse | None = None
    error: BatchError | None = None
    chatbatch: JobFacts | None = None

    @classmethod
    def result(
        cls, job: Job, facts: JobFacts, body: dict[str, Any], status: int = 200
    ) -> OutputLine:
        rid = request_id(facts.batch_id, job.custom_id)
        return cls(
            id=rid,
            custom_id=job.custom_id,
            response=BatchResponse(
                status_code=status, request_id=str(body.get("id") or rid), body=body
            ),
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
    completion_tokens: int
    reasoning_tokens: int
    cost_nanos: int
    cost_usd: Decimal
    cached: bool = False

    @field_serializer("cost_usd")
    def _usd(self, value: Decimal) -> str:
        return str(value)
