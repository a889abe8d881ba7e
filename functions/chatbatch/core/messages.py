"""Chat messages as a job carries them: pydantic mirrors of the openai SDK's message params.

Every key the SDK's message types declare (``openai.types.chat``: the system, developer,
user, assistant, tool and function messages, their content parts and tool calls) is
declared here, so a valid message passes unchanged: dumped with ``exclude_unset`` it is
what the line said (an assistant turn that only calls tools and leaves ``content`` out is
sent with ``content: null``, as OpenAI reads it). ``tests/unit/test_sdk_fidelity.py``
checks the mirror against the SDK's types. An unknown key is an error naming it (it could
be billed, or be a typo).

Refused, because what they bill is not bounded by anything chatbatch can count before the
call: ``input_audio`` and ``file`` content parts (billed by duration and pages) and an
assistant turn's ``audio`` (an earlier audio answer, billed as audio input). An
``image_url`` part is accepted when its model has ``image_input_tokens`` (the most one
image bills; checked in ``job_lines``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictStr, model_validator
from pydantic_core import PydanticCustomError

MESSAGE_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
REFUSED_PARTS = {
    "input_audio": "audio input is billed by its duration at the audio price",
    "file": "a file is billed by its pages and images",
}


class LineModel(BaseModel):
    """A part of a job line: an unknown key is an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


class CacheBreakpoint(LineModel):
    """``prompt_cache_breakpoint`` of a content part: where OpenAI may cache the prompt."""

    mode: Literal["explicit"]
    ttl: Literal["30m", "12h"] | None = None


class TextPart(LineModel):
    type: Literal["text"]
    text: StrictStr
    prompt_cache_breakpoint: CacheBreakpoint | None = None


class ImageUrl(LineModel):
    url: StrictStr
    detail: Literal["auto", "low", "high", "original"] | None = None


class ImagePart(LineModel):
    """An image: billed by its size in tiles, at most the model's ``image_input_tokens``."""

    type: Literal["image_url"]
    image_url: ImageUrl
    prompt_cache_breakpoint: CacheBreakpoint | None = None


class RefusalPart(LineModel):
    """An earlier assistant turn's refusal, sent back as part of the conversation."""

    type: Literal["refusal"]
    refusal: StrictStr


Part = Annotated[TextPart | ImagePart | RefusalPart, Field(discriminator="type")]
PART_TYPES = ("text", "image_url", "refusal")


class CalledFunction(LineModel):
    name: StrictStr
    arguments: StrictStr


class CustomCall(LineModel):
    name: StrictStr
    input: StrictStr


class FunctionToolCall(LineModel):
    """A tool call of an earlier assistant turn: billed as prompt tokens when sent back."""

    id: StrictStr
    type: Literal["function"]
    function: CalledFunction


class CustomToolCall(LineModel):
    """A custom tool's call of an earlier assistant turn (free-text input)."""

    id: StrictStr
    type: Literal["custom"]
    custom: CustomCall


ToolCall = Annotated[FunctionToolCall | CustomToolCall, Field(discriminator="type")]


def _content(value: Any) -> Any:
    """A message's content: a string, a list of content parts, or null. A refused part
    kind is named with why; anything else is left to the part models."""
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise PydanticCustomError("string_type", "must be a string or a list of content parts")
    for index, part in enumerate(value):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in REFUSED_PARTS:
            raise PydanticCustomError(
                "content_part",
                f"part {index} is of type {kind!r}: {REFUSED_PARTS[kind]}, which chatbatch "
                "cannot bound before the call; remove it (text and image_url parts are accepted)",
            )
        if kind not in PART_TYPES:
            shown = f"of type {kind!r}" if kind else "not a content part"
            raise PydanticCustomError(
                "content_part",
                f"part {index} is {shown}: content is a string or a list of parts: "
                '{"type": "text", "text": "..."}, '
                '{"type": "image_url", "image_url": {"url": "..."}} or (an assistant\'s) '
                '{"type": "refusal", "refusal": "..."}',
            )
        if kind == "text" and not isinstance(part.get("text"), str):
            raise PydanticCustomError(
                "content_part",
                f'part {index} must be {{"type": "text", "text": "..."}} with a string text',
            )
    return value


# which part kinds each role may send (OpenAI's message params)
_PARTS_OF_ROLE = {"user": ("text", "image_url"), "assistant": ("text", "refusal")}


class Message(LineModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Annotated[StrictStr | list[Part] | None, BeforeValidator(_content)]
    name: StrictStr | None = None
    tool_call_id: StrictStr | None = None
    tool_calls: list[ToolCall] | None = Field(default=None, min_length=1)
    function_call: CalledFunction | None = None
    refusal: StrictStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _calling_turn(cls, data: Any) -> Any:
        """An assistant turn that only calls tools may leave ``content`` out (as OpenAI's);
        an earlier audio answer is refused."""
        if not isinstance(data, dict):
            return data
        if data.get("audio") is not None:
            raise PydanticCustomError(
                "audio",
                "audio: an earlier audio answer is billed as audio input at the audio price, "
                "which the model's input_per_m does not cover; send its transcript as content",
            )
        data = {k: v for k, v in data.items() if k != "audio"}
        calls = data.get("tool_calls") or data.get("function_call") or data.get("refusal")
        if calls and "content" not in data:
            return {**data, "content": None}
        return data

    @model_validator(mode="after")
    def _fits_its_role(self) -> Message:
        calling = self.tool_calls or self.function_call or self.refusal is not None
        if self.content is None and not (
            self.role == "function" or (self.role == "assistant" and calling)
        ):
            raise PydanticCustomError(
                "content_null",
                "content is null: only an assistant turn with tool_calls (or a function "
                "message) may",
            )
        if (self.tool_calls or self.function_call or self.refusal) and self.role != "assistant":
            raise PydanticCustomError("tool_calls_role", "only an assistant turn has tool_calls")
        if self.role == "tool" and self.tool_call_id is None:
            raise PydanticCustomError("tool_call_id", "a tool message needs its tool_call_id")
        allowed = _PARTS_OF_ROLE.get(self.role, ("text",))
        for index, part in enumerate(self.content if isinstance(self.content, list) else []):
            if part.type not in allowed:
                raise PydanticCustomError(
                    "content_part",
                    f"content part {index} is of type {part.type!r}: a {self.role} message "
                    f"takes {' or '.join(allowed)} parts",
                )
        return self

    def images(self) -> int:
        """How many image parts the message carries."""
        parts = self.content if isinstance(self.content, list) else []
        return sum(1 for part in parts if part.type == "image_url")

    def to_api(self) -> dict[str, Any]:
        """The message as sent: what the line said (``exclude_unset``)."""
        return self.model_dump(exclude_unset=True)
