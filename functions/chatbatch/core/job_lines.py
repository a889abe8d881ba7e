"""Jobs in: the two JSONL line forms, validated and resolved into a ``Job``.

A job line is either an OpenAI Batch API line
``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body": {...}}``
or the short form, the same body's keys at the top beside chatbatch's own
``{"custom_id"?, "model"?, "role"?, "messages" | "prompt", "max_tokens"?, ...}``.
Any valid body passes unchanged: the messages mirror the openai SDK's types
(``core.messages``), every other request key goes through ``request_params`` as given,
and the output cap is sent under the name the line gave it. Both normalise to one
``Job``, resolved against the config (role -> model, system prompt and defaults). A line
that cannot run is a ``JobError`` naming the line (or job) and the field. (A job for a
model at a kind anthropic provider is checked further by its callers, submit and the
worker's intake: ``chatbatch.translate.check_job``.)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
)

from chatbatch.core.anthropic_params import AnthropicParams, ImageBlock, ToolResultBlock
from chatbatch.core.anthropic_to_chat import messages_to_chat, translated_messages
from chatbatch.core.config import ROLE_PARAMS, Config, Priority, Role
from chatbatch.core.jobs import BATCH_ID_PATTERN, CustomId, Job, JobError
from chatbatch.core.messages import LineModel, Message
from chatbatch.core.request_params import refusal
from chatbatch.core.untranslatable import Untranslatable

PASS_THROUGH_PARAMS = ROLE_PARAMS - {"temperature", "max_tokens", "stream"}
# OpenAI's request metadata: at most 16 string pairs, keys up to 64 characters, values up
# to 512; chatbatch's own metadata (copied into every cost record) is bounded the same way
METADATA_MAX_KEYS = 16
METADATA_KEY_MAX_CHARS = 64
METADATA_VALUE_MAX_CHARS = 512
Metadata = Annotated[
    dict[
        Annotated[StrictStr, Field(min_length=1, max_length=METADATA_KEY_MAX_CHARS)],
        Annotated[StrictStr, Field(max_length=METADATA_VALUE_MAX_CHARS)],
    ],
    Field(max_length=METADATA_MAX_KEYS),
]


# hours a job may take (a JSON number above 0): its priority's ``deadline_h`` when unset
DeadlineHours = Annotated[float, Field(gt=0, strict=True, allow_inf_nan=False)]


class _Common(LineModel):
    """Keys both forms accept (chatbatch's own, beside OpenAI's)."""

    custom_id: CustomId | None = None
    batch_id: str | None = Field(default=None, pattern=BATCH_ID_PATTERN)
    priority: Priority | None = None
    role: StrictStr | None = None
    cache: StrictBool = False
    seq: StrictInt | None = Field(default=None, ge=0)
    deadline_h: DeadlineHours | None = None


class _Request(BaseModel):
    """The /v1/chat/completions keys chatbatch reads (the model, the messages, the output
    cap, temperature and streaming, and the typed sampling keys). Every other key is the
    provider's, passed through unchanged when ``request_params`` allows it (it refuses any
    that could bill past the worst case, and unknown ones)."""

    model_config = ConfigDict(extra="allow")

    model: StrictStr | None = None
    max_tokens: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    stream: StrictBool = False
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    response_format: dict[str, Any] | None = None
    metadata: Metadata | None = None

    def params(self) -> dict[str, Any]:
        """The keys passed through as given: the typed ones the line set, and the rest."""
        typed = self.model_dump(include=_TYPED_PARAMS, exclude_unset=True)
        return typed | dict(self.model_extra or {})


_TYPED_PARAMS = {"top_p", "stop", "seed", "presence_penalty", "frequency_penalty"}
_TYPED_PARAMS |= {"response_format", "metadata"}


class ChatBody(_Request):
    """A /v1/chat/completions request body, as the OpenAI Batch form carries it."""

    messages: list[Message] = Field(min_length=1)


class ShortLine(_Common, _Request):
    """The short form: the request's keys at the top, beside chatbatch's own."""

    model_config = ConfigDict(extra="allow")

    messages: list[Message] | None = Field(default=None, min_length=1)
    prompt: StrictStr | None = Field(default=None, min_length=1)


class BatchLine(_Common):
    method: Literal["POST"]
    url: Literal["/v1/chat/completions"]
    body: ChatBody
    metadata: Metadata = Field(default_factory=dict)  # chatbatch's own: kept, never sent


class AnthropicLine(_Common):
    """An Anthropic Message Batches line: ``params`` is a ``MessageCreateParams``."""

    params: AnthropicParams
    metadata: Metadata = Field(default_factory=dict)  # chatbatch's own: kept, never sent


# pydantic's names of union members in an error's location, not fields of the line: the
# model and type names, and a tagged union's tag (a part's or a tool call's type) after an index
_TYPE_NAMES = {"ShortLine", "BatchLine", "AnthropicLine", "str", "none"}
_TAGS = {"text", "image_url", "refusal", "function", "custom", "image", "tool_use"}
_TAGS |= {"tool_result", "thinking", "redacted_thinking", "base64", "url", "auto", "any", "tool"}
_TAGS |= {"enabled", "disabled", "adaptive", "none"}
_TAGGED_FIELDS = {"source", "tool_choice", "thinking"}  # a tagged union's field, not a list


def _field(loc: tuple[int | str, ...]) -> str:
    out = ""
    for index, part in enumerate(loc):
        if isinstance(part, str) and ("[" in part or part in _TYPE_NAMES):
            continue
        if (
            part in _TAGS
            and index
            and (isinstance(loc[index - 1], int) or loc[index - 1] in _TAGGED_FIELDS)
        ):
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
    "finite_number": "must be a finite number",
    "dict_type": "must be a JSON object",
    "list_type": "must be a list",
}


def _from_validation(err: ValidationError) -> tuple[str, str]:
    # of a union's errors (a string? a list of parts?) the deepest names the field best
    e = max(err.errors(include_url=False), key=lambda found: len(found["loc"]))
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


def _request(line: ShortLine | BatchLine) -> tuple[_Request, list[Message], str]:
    """The line's request part, its messages and the prefix its fields are named with."""
    if isinstance(line, BatchLine):
        return line.body, list(line.body.messages), "body."
    if line.messages is None and line.prompt is None:
        raise JobError("messages", "give messages (a list) or prompt (a string)")
    if line.messages is not None and line.prompt is not None:
        raise JobError("prompt", "give messages or prompt, not both")
    return line, list(line.messages or [Message(role="user", content=line.prompt or "")]), ""


def _role(name: str | None, config: Config) -> Role | None:
    role = config.roles.get(name) if name else None
    if name and role is None:
        raise JobError("role", f"unknown role {name!r}; configured: {sorted(config.roles)}")
    return role


def _resolve(line: ShortLine | BatchLine, config: Config, seq: int | None) -> Job:
    request, messages, prefix = _request(line)
    if request.max_tokens is not None and request.max_completion_tokens is not None:
        raise JobError(
            f"{prefix}max_tokens",
            "give max_tokens or max_completion_tokens, not both (either caps the output; "
            "chatbatch sends the one given)",
        )
    cap_field: Literal["max_tokens", "max_completion_tokens"] | None = None
    max_tokens = request.max_tokens
    if max_tokens is not None:
        cap_field = "max_tokens"
    elif request.max_completion_tokens is not None:
        cap_field, max_tokens = "max_completion_tokens", request.max_completion_tokens
    requested_model, temperature, stream = request.model, request.temperature, request.stream
    params = request.params()
    for key, value in params.items():
        if refused := refusal(key, value):
            raise JobError(prefix + refused[0], refused[1])

    role = _role(line.role, config)
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
    if cap_field == "max_tokens" and model.reasoning:
        raise JobError(
            f"{prefix}max_tokens",
            f"{name} is a reasoning model (models.{name}.reasoning): it refuses max_tokens; "
            "give max_completion_tokens instead",
        )
    _check_images(messages, model.image_input_tokens, name, prefix)
    if max_tokens is not None and not 0 < max_tokens <= model.max_output_tokens:
        raise JobError(
            prefix + (cap_field or "max_tokens"),
            f"must be between 1 and {model.max_output_tokens} for {name} (got {max_tokens}; "
            f"models.{name}.max_output_tokens)",
        )
    job = Job(
        **_line_keys(line, seq),
        model=name,
        messages=messages,
        max_tokens=max_tokens,
        cap_param=cap_field or (model.cap_param if max_tokens is not None else None),
        temperature=temperature,
        stream=stream,
        metadata=line.metadata if isinstance(line, BatchLine) else {},
        params=params,
    )
    return job


def _line_keys(line: _Common, seq: int | None) -> dict[str, Any]:
    """chatbatch's own keys of a line, as its job holds them."""
    return {
        "custom_id": line.custom_id or f"line-{seq}",
        "batch_id": line.batch_id,
        "seq": line.seq if line.seq is not None else seq,
        "role": line.role,
        "priority": line.priority,
        "cache": line.cache,
        "deadline_h": line.deadline_h,
    }


def _check_images(
    messages: list[Message], image_tokens: int | None, name: str, prefix: str
) -> None:
    """An image part needs its model's worst case per image (``image_input_tokens``)."""
    if image_tokens is not None:
        return
    for index, message in enumerate(messages):
        if message.images():
            raise JobError(
                f"{prefix}messages[{index}].content",
                f"an image_url part, but models.{name}.image_input_tokens is not set: "
                "chatbatch cannot bound what an image bills at this model; set it in "
                "chatbatch.toml (the most prompt tokens one image costs) or remove the image",
            )


def _anthropic_images(params: AnthropicParams, image_tokens: int | None, name: str) -> None:
    """An image block needs its model's worst case per image (``image_input_tokens``)."""
    if image_tokens is not None:
        return
    for index, message in enumerate(params.messages):
        blocks = message.content if isinstance(message.content, list) else []
        inner = [p for b in blocks if isinstance(b, ToolResultBlock) for p in b.content or []]
        if any(isinstance(block, ImageBlock) for block in [*blocks, *inner]):
            raise JobError(
                f"params.messages[{index}].content",
                f"an image block, but models.{name}.image_input_tokens is not set: "
                "chatbatch cannot bound what an image bills at this model; set it in "
                "chatbatch.toml (the most prompt tokens one image costs) or remove the image",
            )


def _line_field(field: str, params: dict[str, Any]) -> str:
    """A field of an Anthropic line's translated chat request, named as the line's: a
    translated message as the line's message (or ``system``) it comes from."""
    if not field.startswith("body."):
        return field
    rest = field.removeprefix("body.")
    found = re.match(r"messages\[(\d+)\]", rest)
    origins = [origin for origin, _ in translated_messages(params)]
    if found and int(found[1]) < len(origins):
        return "params." + origins[int(found[1])]
    return "params." + rest


def _anthropic(data: dict[str, Any], config: Config, seq: int | None) -> Job:
    """An Anthropic line -> Job: its params validated and kept as given (a role's system
    prompt added when they have no ``system``); for a model on Anthropic's own API that is
    all (``_native``), for an OpenAI-kind one they are also translated into the chat request
    it is sent (``core.anthropic_to_chat``)."""
    if isinstance(data["params"], dict) and "max_tokens" not in data["params"]:
        raise JobError(
            "params.max_tokens",
            "required: Anthropic's Messages API requires max_tokens (the most output tokens "
            "of the answer); add it",
        )
    line = AnthropicLine.model_validate(data)
    params = line.params
    resolved = config.resolve_model(params.model)
    if resolved is None:
        raise JobError(
            "params.model", f"unknown model {params.model!r}; configured: {sorted(config.models)}"
        )
    name, model = resolved
    _anthropic_images(params, model.image_input_tokens, name)
    if params.max_tokens > model.max_output_tokens:
        raise JobError(
            "params.max_tokens",
            f"must be between 1 and {model.max_output_tokens} for {name} (got "
            f"{params.max_tokens}; models.{name}.max_output_tokens)",
        )
    given = data["params"]
    role = _role(line.role, config)
    if role and role.system_prompt and "system" not in given:
        given = {**given, "system": role.system_prompt}
    if config.providers[model.provider].kind == "anthropic":
        return _native(line, given, name, seq)
    try:
        body = messages_to_chat(given)
    except Untranslatable as err:
        raise JobError(f"params.{err.field}", err.why) from None
    chat = {k: v for k, v in data.items() if k != "params"}
    chat |= {"method": "POST", "url": "/v1/chat/completions", "body": body}
    try:
        job = _resolve(BatchLine.model_validate(chat), config, seq)
    except ValidationError as err:  # the translated request's field, under the line's name
        field, msg = _from_validation(err)
        raise JobError(_line_field(field, given), msg) from None
    except JobError as err:
        err.field = _line_field(err.field, given)
        raise
    update = {"form": "anthropic", "native_params": given, "max_tokens": params.max_tokens}
    return job.model_copy(update=update | {"cap_param": None})


def _native(line: AnthropicLine, given: dict[str, Any], model: str, seq: int | None) -> Job:
    """An Anthropic line for a model served by Anthropic's own API: its params are sent as
    given (``translate.native_body``), so nothing is refused for a translation's sake. Its
    chat fields stay empty: its bound, estimate and cache key read the params."""
    return Job(
        **_line_keys(line, seq),
        model=model,
        messages=[],
        max_tokens=line.params.max_tokens,
        metadata=line.metadata,
        form="anthropic",
        native_params=given,
    )


def line_form(data: Any) -> Literal["openai", "anthropic"]:
    """The form of a decoded line: Anthropic's when it carries ``params``."""
    return "anthropic" if isinstance(data, dict) and "params" in data else "openai"


def parse_job(data: Any, config: Config, *, seq: int | None = None) -> Job:
    """A decoded JSON value -> Job, or JobError naming the field."""
    if not isinstance(data, dict):
        raise JobError("(line)", f"must be a JSON object (got {type(data).__name__})")
    custom_id = data.get("custom_id") if isinstance(data.get("custom_id"), str) else None
    try:
        if "custom_id" not in data and seq is None:
            raise JobError("custom_id", "required for a job sent straight to a queue")
        if line_form(data) == "anthropic":
            return _anthropic(data, config, seq)
        kind = BatchLine if {"body", "url", "method"} & data.keys() else ShortLine
        line = kind.model_validate(data)
        return _resolve(line, config, seq)
    except ValidationError as err:
        field, msg = _from_validation(err)
        refused = JobError(field, msg, custom_id=custom_id)
        refused.form = line_form(data)
        raise refused from None
    except JobError as err:
        err.custom_id = err.custom_id or custom_id
        err.form = line_form(data)
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


_FORM_NAMES = {
    "anthropic": 'an Anthropic Message Batches line ({"custom_id", "params"})',
    "openai": "an OpenAI line (a /v1/chat/completions body, batch or short form)",
}


def _one_form(job: Job, number: int, first: dict[str, int]) -> None:
    """A file holds lines of one form: its results are written in that form's shape."""
    first.setdefault(job.form, number)
    other = next((form for form in first if form != job.form), None)
    if other is not None:
        raise JobError(
            "(line)",
            f"this is {_FORM_NAMES[job.form]}, but line {first[other]} is "
            f"{_FORM_NAMES[other]}: a batch's results are written in its form's shape, so a "
            "file holds lines of one form; put the lines of each form in a file of their own",
            line=number,
            custom_id=job.custom_id,
        )


def parse_lines(
    lines: Iterable[str | bytes], config: Config
) -> Iterator[tuple[int, Job | JobError]]:
    """Stream a JSONL file: (line number, Job or JobError) for every non-blank line.

    Duplicate custom_ids are reported on their second occurrence. Only the ids are kept
    in memory, never the jobs.
    """
    seen: set[str] = set()
    first: dict[str, int] = {}  # form -> the first line of that form
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            job = parse_line(text, config, line=number)
            _one_form(job, number, first)
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
