"""The Anthropic half of ``chatbatch.translate`` (lines' side): Anthropic params -> a chat
request the openai SDK's types and chatbatch's own chat mirror accept; chat.completion ->
an ``anthropic.types.Message``; stored lines -> ``MessageBatchIndividualResponse`` lines."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from anthropic.types import Message
from anthropic.types.messages import MessageBatchIndividualResponse
from hypothesis import given
from hypothesis import strategies as st
from openai.types.chat import completion_create_params
from pydantic import TypeAdapter

from chatbatch.core.anthropic_to_chat import messages_to_chat
from chatbatch.core.config import Config, Priority
from chatbatch.core.job_lines import ChatBody, parse_job
from chatbatch.core.output_lines import JobFacts, OutputLine
from chatbatch.core.pricing import Usage
from chatbatch.core.request_params import refusal
from chatbatch.translate.batch_results import anthropic_line, written
from chatbatch.translate.completion_to_message import completion_to_message, tool_use_id
from tests.unit.test_anthropic_lines import FULL, line

CHAT = TypeAdapter(completion_create_params.CompletionCreateParamsNonStreaming)


def materialised(value: Any) -> Any:
    """The SDK's TypedDicts validate iterables lazily: walk them so every item is checked."""
    if isinstance(value, dict):
        return {k: materialised(v) for k, v in value.items()}
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return [materialised(v) for v in value]


def test_translated_params_are_a_chat_request_both_sdk_and_mirror_accept() -> None:
    body = messages_to_chat(FULL["params"], "max_completion_tokens")
    assert materialised(CHAT.validate_python(body)) == body
    ChatBody.model_validate(body)  # chatbatch's own mirror (extra keys forbidden)
    for key, value in body.items():
        if key not in ("model", "messages", "max_completion_tokens", "stream", "temperature"):
            assert refusal(key, value) is None, key
    assert body["max_completion_tokens"] == 50
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "user"]
    assert body["messages"][3] == {
        "role": "tool",
        "tool_call_id": "t1",
        "content": [{"type": "text", "text": "sun"}],
    }


def test_a_base64_image_becomes_a_data_url() -> None:
    source = {"type": "base64", "media_type": "image/png", "data": "AAAA"}
    params = {
        "model": "m",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": [{"type": "image", "source": source}]}],
    }
    part = messages_to_chat(params)["messages"][0]["content"][0]
    assert part == {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


def test_a_search_result_in_a_tool_result_becomes_text_of_the_tool_message() -> None:
    """Search results the caller's own search tool returned (inside a tool_result) reach
    an OpenAI-kind provider as the tool message's text, as a top-level one does."""
    result = {"type": "search_result", "source": "https://e.x/a", "title": "A",
              "content": [{"type": "text", "text": "a fact"}]}  # fmt: skip
    call = {"type": "tool_use", "id": "t1", "name": "search", "input": {}}
    params = {
        "model": "m",
        "max_tokens": 5,
        "messages": [
            {"role": "user", "content": "look it up"},
            {"role": "assistant", "content": [call]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": [result]}]},
        ],
    }  # fmt: skip
    tool = messages_to_chat(params)["messages"][2]
    assert tool["role"] == "tool" and tool["tool_call_id"] == "t1"
    assert tool["content"] == [
        {"type": "text", "text": "Search result: A\nSource: https://e.x/a\n\na fact"}
    ]


def completion(
    message: dict[str, Any], reason: str | None, usage: dict[str, Any] | None
) -> dict[str, Any]:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4.1",
        "choices": [{"index": 0, "message": message, "finish_reason": reason}],
    }
    return body if usage is None else body | {"usage": usage}


USAGE = {
    "prompt_tokens": 30,
    "completion_tokens": 7,
    "total_tokens": 37,
    "prompt_tokens_details": {"cached_tokens": 10},
}


def test_a_completion_with_tool_calls_is_a_message_with_tool_use_blocks() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    body = completion(
        {"role": "assistant", "content": "calling", "tool_calls": [call]}, "tool_calls", USAGE
    )
    message = Message.model_validate(completion_to_message(body))
    assert [b.type for b in message.content] == ["text", "tool_use"]
    tool_use = message.content[1]
    assert tool_use.type == "tool_use" and tool_use.input == {"a": 1}
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (20, 10)
    assert message.usage.output_tokens == 7


CALL = {"type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}


@pytest.mark.parametrize("tool_choice", [{"type": "tool", "name": "weather"}, {"type": "any"}])
def test_a_forced_tool_call_is_stop_reason_tool_use(
    config: Config, tool_choice: dict[str, Any]
) -> None:
    """OpenAI answers a forced call (tool_choice a named function or required) with
    ``finish_reason: "stop"``: tool calls present are ``tool_use`` whatever it says, so an
    Anthropic agent loop (``if stop_reason == "tool_use"``) runs the tool."""
    tools = [{"name": "weather", "input_schema": {"type": "object"}}]
    job = parse_job(line(tools=tools, tool_choice=tool_choice), config, seq=1)
    assert job.request_body(config.models["gpt-4.1"])["tool_choice"] in (
        "required",
        {"type": "function", "function": {"name": "weather"}},
    )
    for reason, stop_reason in [("stop", "tool_use"), (None, "tool_use"), ("length", "max_tokens")]:
        message = {"role": "assistant", "content": None, "tool_calls": [CALL | {"id": "c1"}]}
        body = completion(message, reason, USAGE)
        translated = Message.model_validate(completion_to_message(body))
        assert [b.type for b in translated.content] == ["tool_use"]
        assert translated.stop_reason == stop_reason, reason


@pytest.mark.parametrize(
    "call",
    [CALL, CALL | {"id": None}, CALL | {"id": ""}],  # a gateway's; ChatStream's assembly
    ids=["no-id", "id-none", "id-empty"],
)
def test_a_tool_call_without_an_id_gets_a_stable_one(call: dict[str, Any]) -> None:
    """ "Every completion has a Message": a call without an id is a ``tool_use`` with a
    stable ``toolu_`` id (the job's custom_id and the call's index), never a KeyError that
    stops collect nor ``id: null``."""
    body = completion(
        {"role": "assistant", "content": None, "tool_calls": [CALL | {"id": "c0"}, call]},
        "tool_calls",
        USAGE,
    )
    stored = OutputLine.answered("b", "j", 200, body, "req_1", FACTS)
    text, in_results = written("anthropic", stored)
    assert in_results
    result = MessageBatchIndividualResponse.model_validate_json(text).result
    assert result.type == "succeeded"
    ids = [block.id for block in result.message.content if block.type == "tool_use"]
    assert ids == ["c0", tool_use_id("j", 1)] and ids[1].startswith("toolu_")
    assert tool_use_id("j", 1) == tool_use_id("j", 1) != tool_use_id("k", 1)


def test_an_answer_billed_at_its_worst_case_reports_the_usage_booked() -> None:
    """An answer that came without usage is booked at its worst case (``usage_estimated``,
    ``booked_usage``): its Message's usage is that, as its cost record has it, not 0 (the
    review's test gave the facts no booked usage: nothing in a line said what was booked,
    so the pipeline now writes it, tested in tests/integration/test_books.py)."""
    body = completion({"role": "assistant", "content": "hi"}, "stop", None)
    booked = Usage(prompt_tokens=2048, completion_tokens=50)
    facts = FACTS.model_copy(update={"usage_estimated": True, "booked_usage": booked})
    data = anthropic_line(OutputLine.answered("b", "j", 200, body, "req_1", facts))
    result = MessageBatchIndividualResponse.model_validate(data).result
    assert result.type == "succeeded"
    usage = result.message.usage
    assert (usage.input_tokens, usage.output_tokens) == (2048, 50)
    assert data["chatbatch"]["booked_usage"]["prompt_tokens"] == 2048


@pytest.mark.parametrize("usage", [None, {"output_tokens": 3}], ids=["none", "no_input_count"])
def test_a_native_message_billed_at_its_worst_case_reports_the_usage_booked(
    usage: dict[str, Any] | None,
) -> None:
    """A Message from Anthropic's own API kept as it came, which came without usage (or
    without its input count): booked at its worst case, its results line reports that usage
    (every prompt token under the count it was booked as: here all written for an hour), a
    valid SDK batch result."""
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
               "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
               "stop_sequence": None} | ({"usage": usage} if usage else {})  # fmt: skip
    booked = Usage(
        prompt_tokens=900, completion_tokens=50, cache_write_tokens=900, cache_write_1h_tokens=900
    )
    facts = FACTS.model_copy(update={"usage_estimated": True, "booked_usage": booked})
    data = anthropic_line(OutputLine.answered("b", "j", 200, message, "req_1", facts))
    result = MessageBatchIndividualResponse.model_validate(data).result
    assert result.type == "succeeded"
    got = result.message.usage
    assert (got.input_tokens, got.cache_creation_input_tokens, got.output_tokens) == (0, 900, 50)
    assert got.cache_creation is not None and got.cache_creation.ephemeral_1h_input_tokens == 900


def test_an_unknown_finish_reason_is_kept_beside_its_end_turn() -> None:
    """No Anthropic stop_reason means DeepSeek's ``insufficient_system_resource`` (an
    answer cut by the provider): the Message says ``end_turn`` and the line's chatbatch
    extension keeps the provider's ``finish_reason``, so a cut answer is not shown
    complete; a known reason adds nothing."""
    body = completion(
        {"role": "assistant", "content": "Par"}, "insufficient_system_resource", USAGE
    )
    data = anthropic_line(OutputLine.answered("b", "j", 200, body, "req_1", FACTS))
    result = MessageBatchIndividualResponse.model_validate(data).result
    assert result.type == "succeeded" and result.message.stop_reason == "end_turn"
    assert data["chatbatch"]["finish_reason"] == "insufficient_system_resource"
    known = completion({"role": "assistant", "content": "Paris"}, "stop", USAGE)
    data = anthropic_line(OutputLine.answered("b", "j", 200, known, "req_1", FACTS))
    assert "finish_reason" not in data["chatbatch"]


@given(
    content=st.one_of(st.none(), st.text()),
    reason=st.sampled_from(["stop", "length", "tool_calls", "content_filter", None]),
    arguments=st.lists(st.text(), max_size=3),
    prompt=st.integers(0, 10**6),
    completion_tokens=st.integers(0, 10**6),
)
def test_every_completion_is_a_valid_message(
    content: str | None,
    reason: str | None,
    arguments: list[str],
    prompt: int,
    completion_tokens: int,
) -> None:
    calls = [
        {"id": f"c{i}", "type": "function", "function": {"name": "f", "arguments": a}}
        for i, a in enumerate(arguments)
    ]
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    usage = {"prompt_tokens": prompt, "completion_tokens": completion_tokens}
    translated = Message.model_validate(completion_to_message(completion(message, reason, usage)))  # type: ignore[arg-type]
    assert len(translated.content) == (1 if content else 0) + len(calls)
    assert translated.usage.input_tokens == prompt


FACTS = JobFacts(
    batch_id="b", priority=Priority.normal, model="gpt-4.1", cost_usd=Decimal("0.000123")
)


def provider_error(status: int, kind: str) -> OutputLine:
    body = {"error": {"message": "no", "type": kind, "param": None, "code": None}}
    return OutputLine.answered("b", "j", status, body, "req_1", FACTS)


@pytest.mark.parametrize(
    ("line", "kind", "error_type", "code"),
    [
        (
            OutputLine.answered(
                "b",
                "j",
                200,
                completion({"role": "assistant", "content": "hi"}, "stop", USAGE),
                "req_1",
                FACTS,
            ),
            "succeeded",
            None,
            None,
        ),
        (
            provider_error(400, "invalid_request_error"),
            "errored",
            "invalid_request_error",
            "provider_400",
        ),
        (provider_error(429, "rate_limit_error"), "errored", "rate_limit_error", "provider_429"),
        (provider_error(529, "overloaded"), "errored", "overloaded_error", "provider_529"),
        (provider_error(500, "server"), "errored", "api_error", "provider_500"),
        (
            OutputLine.failure("b", "j", "batch_cancelled", "cancelled"),
            "canceled",
            None,
            "batch_cancelled",
        ),
        (
            OutputLine.failure("b", "j", "batch_expired", "expired"),
            "expired",
            None,
            "batch_expired",
        ),
        (
            OutputLine.failure("b", "j", "invalid_job", "line 2: params.x: bad"),
            "errored",
            "invalid_request_error",
            "invalid_job",
        ),
        (
            OutputLine.failure("b", "j", "dead_lettered", "gave up"),
            "errored",
            "api_error",
            "dead_lettered",
        ),
    ],
)
def test_every_stored_line_is_an_anthropic_batch_result(
    line: OutputLine, kind: str, error_type: str | None, code: str | None
) -> None:
    data = anthropic_line(line)
    result = MessageBatchIndividualResponse.model_validate(data).result
    assert result.type == kind and data["custom_id"] == "j"
    if result.type == "errored":
        assert result.error.type == "error" and result.error.error.type == error_type
    assert data["chatbatch"].get("code") == code
    if line.chatbatch is not None:
        assert data["chatbatch"]["cost_usd"] == "0.000123"  # an exact decimal string
    text, in_results = written("anthropic", line)
    assert in_results and MessageBatchIndividualResponse.model_validate_json(text)
    assert written("openai", line) == (line.to_line(), line.is_result)
