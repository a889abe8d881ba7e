"""Anthropic Message Batches request params as a job carries them: pydantic mirrors of the
anthropic SDK's ``MessageCreateParamsNonStreaming`` and the content blocks it holds.

A line ``{"custom_id", "params": {...}}`` is validated here and its params are kept as
given (``AnthropicParams.given``). Every key the SDK declares is declared here or refused
with a reason (``REFUSED_KEYS``); ``tests/unit/test_anthropic_lines.py`` checks the mirror
against the SDK's TypedDicts. ``temperature``, ``top_p`` and ``top_k`` are accepted as
Anthropic's API reference documents them (the 2.15 SDK no longer declares them).

Accepted content blocks: text, image (base64 or url source), tool_use, tool_result,
thinking, redacted_thinking and search_result (client-supplied text, billed as prompt
tokens like a text block; also inside a tool_result). An image's ``file`` source is
refused: it names a file of Anthropic's Files API (a beta), which no other provider can
read and chatbatch does not send. ``stream: true`` is refused as Anthropic's Message
Batches refuse it (a batch request is ``MessageCreateParamsNonStreaming``); ``stream:
false`` is accepted. What Anthropic's API refuses of accepted params (empty or blank text,
more than 4 cache breakpoints, ...) is refused at submit by ``translate.messages_rules``.

Refused, because what they bill cannot be bounded before the call: document blocks
(billed by their pages, text and an image each), server tools and their blocks (billed
per use), and the keys in ``REFUSED_KEYS``. A ``system`` message inside ``messages`` is
accepted: the 2.15 SDK's ``MessageParam`` declares it (``SystemMessageParam``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    model_validator,
)
from pydantic_core import PydanticCustomError

from chatbatch.core.messages import LineModel

# key of MessageCreateParams -> why chatbatch refuses it
REFUSED_KEYS = {
    "container": "a code-execution container is billed per use, which chatbatch cannot bound",
    "diagnostics": "cache diagnostics are not supported; remove it",
    "inference_geo": "a region may be priced above the configured prices; remove it",
    "output_config": "output configuration (effort, structured output) is not supported yet; "
    "remove it",
    "speed": "fast mode is billed above the configured prices; remove it",
    "user_profile_id": "not supported; remove it",
    "workspace_id": "not supported; remove it",
}
BLOCK_TYPES = (
    "text",
    "image",
    "tool_use",
    "tool_result",
    "thinking",
    "redacted_thinking",
    "search_result",
)
REFUSED_BLOCKS = {
    "document": "a document is billed by its pages (text and an image each), which "
    "chatbatch cannot bound before the call; send its text as a text block",
}

# an unknown block kind that names a tool is a server tool's (server_tool_use, ...)
SERVER_BLOCKS = " (server tools and their blocks bill per use, which chatbatch cannot bound)"


class CacheControl(LineModel):
    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class TextBlock(LineModel):
    type: Literal["text"]
    text: StrictStr
    cache_control: CacheControl | None = None
    citations: list[dict[str, Any]] | None = None


class Base64Source(LineModel):
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: StrictStr


class UrlSource(LineModel):
    type: Literal["url"]
    url: StrictStr


def _image_source(value: Any) -> Any:
    if isinstance(value, dict) and value.get("type") == "file":
        raise PydanticCustomError(
            "image_source",
            "a file source names a file of Anthropic's Files API (a beta), which chatbatch "
            "does not send and other providers cannot read; give the image as a base64 or "
            "url source",
        )
    return value


ImageSource = Annotated[
    Base64Source | UrlSource, Field(discriminator="type"), BeforeValidator(_image_source)
]


class ImageBlock(LineModel):
    """An image: billed at most the model's ``image_input_tokens``."""

    type: Literal["image"]
    source: ImageSource
    cache_control: CacheControl | None = None
    transformations: dict[str, Any] | None = None


class ToolUseBlock(LineModel):
    """A tool call of an earlier assistant turn."""

    type: Literal["tool_use"]
    id: StrictStr
    name: StrictStr
    input: dict[str, Any]
    cache_control: CacheControl | None = None
    caller: dict[str, Any] | None = None
    toolset_name: StrictStr | None = None


class ToolResultBlock(LineModel):
    """A tool's answer to an earlier call (text, image or search_result blocks)."""

    type: Literal["tool_result"]
    tool_use_id: StrictStr
    content: StrictStr | list[ResultPart] | None = None
    is_error: StrictBool | None = None
    cache_control: CacheControl | None = None
    toolset_name: StrictStr | None = None


class CitationsConfig(LineModel):
    enabled: StrictBool | None = None


class SearchResultBlock(LineModel):
    """A search result the caller supplies (its source, title and text): prompt text."""

    type: Literal["search_result"]
    source: StrictStr
    title: StrictStr
    content: list[TextBlock]
    cache_control: CacheControl | None = None
    citations: CitationsConfig | None = None


# a tool result's content: text, images, and search results (the caller's own search tool)
ResultPart = Annotated[TextBlock | ImageBlock | SearchResultBlock, Field(discriminator="type")]


class ThinkingBlock(LineModel):
    type: Literal["thinking"]
    thinking: StrictStr
    signature: StrictStr


class RedactedThinkingBlock(LineModel):
    type: Literal["redacted_thinking"]
    data: StrictStr


Block = Annotated[
    TextBlock
    | ImageBlock
    | ToolUseBlock
    | ToolResultBlock
    | ThinkingBlock
    | RedactedThinkingBlock
    | SearchResultBlock,
    Field(discriminator="type"),
]


def _blocks(value: Any) -> Any:
    """A message's content: a string or a list of blocks; a refused or unknown block kind
    is named with why (anything else is left to the block models)."""
    if isinstance(value, str) or not isinstance(value, list):
        return value
    for index, block in enumerate(value):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind in REFUSED_BLOCKS:
            raise PydanticCustomError(
                "content_block", f"block {index} is of type {kind!r}: {REFUSED_BLOCKS[kind]}"
            )
        if kind not in BLOCK_TYPES:
            shown = f"of type {kind!r}" if kind else "not a content block"
            why = SERVER_BLOCKS if isinstance(kind, str) and "tool" in kind else ""
            raise PydanticCustomError(
                "content_block",
                f"block {index} is {shown}: accepted blocks are {', '.join(BLOCK_TYPES)}{why}",
            )
    return value


class AnthropicMessage(LineModel):
    role: Literal["user", "assistant", "system"]
    content: Annotated[StrictStr | list[Block], BeforeValidator(_blocks)]


class Tool(LineModel):
    """A client tool (a function the caller runs); server tools are refused."""

    name: StrictStr
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None
    description: StrictStr | None = None
    cache_control: CacheControl | None = None
    strict: StrictBool | None = None
    allowed_callers: list[StrictStr] | None = None
    defer_loading: StrictBool | None = None
    eager_input_streaming: StrictBool | None = None
    input_examples: list[dict[str, Any]] | None = None


class ToolChoiceAuto(LineModel):
    type: Literal["auto"]
    disable_parallel_tool_use: StrictBool | None = None


class ToolChoiceAny(LineModel):
    type: Literal["any"]
    disable_parallel_tool_use: StrictBool | None = None


class ToolChoiceTool(LineModel):
    type: Literal["tool"]
    name: StrictStr
    disable_parallel_tool_use: StrictBool | None = None


class ToolChoiceNone(LineModel):
    type: Literal["none"]


ToolChoice = Annotated[
    ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone, Field(discriminator="type")
]


class ThinkingEnabled(LineModel):
    """Extended thinking: its ``budget_tokens`` are inside ``max_tokens``."""

    type: Literal["enabled"]
    budget_tokens: StrictInt = Field(ge=1024)
    display: Literal["summarized", "omitted"] | None = None


class ThinkingDisabled(LineModel):
    type: Literal["disabled"]


class ThinkingAdaptive(LineModel):
    type: Literal["adaptive"]
    display: Literal["summarized", "omitted"] | None = None


Thinking = Annotated[
    ThinkingEnabled | ThinkingDisabled | ThinkingAdaptive, Field(discriminator="type")
]


class AnthropicMetadata(LineModel):
    user_id: StrictStr | None = None


def _refused_keys(value: Any) -> Any:
    if isinstance(value, dict):
        for key in value:
            if key in REFUSED_KEYS:
                raise PydanticCustomError(
                    "refused_key", f"{key} is not accepted: {REFUSED_KEYS[key]}"
                )
        if isinstance(value.get("tools"), list):
            for index, tool in enumerate(value["tools"]):
                kind = tool.get("type") if isinstance(tool, dict) else None
                if kind not in (None, "custom"):
                    raise PydanticCustomError(
                        "server_tool",
                        f"tools[{index}] is a server tool ({kind!r}): it bills per use, "
                        "which chatbatch cannot bound before the call; give client tools "
                        "(name, description, input_schema)",
                    )
    return value


def _not_streamed(value: bool | None) -> bool | None:
    if value:
        raise PydanticCustomError(
            "batch_stream",
            "a Message Batches request does not stream (Anthropic refuses stream: true in a "
            "batch; its answer is one Message): remove it",
        )
    return value


class AnthropicParams(LineModel):
    """``MessageCreateParams``: model and max_tokens are required, as at Anthropic."""

    model: StrictStr
    max_tokens: StrictInt = Field(ge=1)
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: StrictStr | list[TextBlock] | None = None
    stop_sequences: list[StrictStr] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: StrictInt | None = Field(default=None, ge=0)
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    metadata: AnthropicMetadata | None = None
    service_tier: Literal["auto", "standard_only"] | None = None
    cache_control: CacheControl | None = None
    stream: Annotated[StrictBool | None, AfterValidator(_not_streamed)] = None

    _refused = model_validator(mode="before")(_refused_keys)

    @model_validator(mode="after")
    def _thinking_within_cap(self) -> AnthropicParams:
        if isinstance(self.thinking, ThinkingEnabled) and (
            self.thinking.budget_tokens >= self.max_tokens
        ):
            raise PydanticCustomError(
                "thinking_budget",
                "thinking.budget_tokens must be less than max_tokens (thinking is inside "
                "max_tokens at Anthropic)",
            )
        return self

    def given(self) -> dict[str, Any]:
        """The params as the line gave them."""
        return self.model_dump(exclude_unset=True)
