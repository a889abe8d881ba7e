"""OpenAI-form jobs to Anthropic's Messages API and back: the translated request validates
as the anthropic SDK's MessageCreateParams, the translated answer as the openai SDK's
ChatCompletion, and what has no equivalent is refused at submit naming job and field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from anthropic.types import Message as AnthropicMessage
from anthropic.types.message_create_params import (
    MessageCreateParamsNonStreaming,
    MessageCreateParamsStreaming,
)
from openai.types.chat import ChatCompletion
from pydantic import TypeAdapter

from chatbatch.client.submit import iter_jobs, plan_file
from chatbatch.core.config import Config, Priority, parse_config
from chatbatch.core.job_lines import parse_job
from chatbatch.core.jobs import JobError
from chatbatch.core.untranslatable import Untranslatable
from chatbatch.translate import check_job, result_body, wire_body
from chatbatch.translate.chat_to_messages import SAMPLING, chat_to_messages
from chatbatch.translate.message_to_completion import message_to_completion
from chatbatch.worker.intake import read_record
from tests.unit.test_anthropic_config import anthropic_config
from tests.unit.test_intake import NOW, RESOURCES, NoStore, record

PLAIN = TypeAdapter(MessageCreateParamsNonStreaming)
STREAMED = TypeAdapter(MessageCreateParamsStreaming)
PNG = "data:image/png;base64,iVBORw0KGgo="


@pytest.fixture(scope="module")
def config() -> Config:
    return parse_config(anthropic_config(image_input_tokens=1600))


def valid_request(body: dict[str, Any]) -> None:
    """The body validates as the SDK's request type, and has no key the type lacks (a
    TypedDict adapter ignores extra keys). The SDK (2.x) describes anthropic-version
    2026-10-21, without temperature, top_p and top_k; under 2023-06-01 (chatbatch's
    default) they are valid numbers, checked apart."""
    body = dict(body)
    for key in SAMPLING:
        value = body.pop(key, None)
        assert value is None or isinstance(value, int | float)
    kind = MessageCreateParamsStreaming if body.get("stream") else MessageCreateParamsNonStreaming
    (STREAMED if body.get("stream") else PLAIN).validate_python(body, strict=False)
    assert set(body) <= kind.__required_keys__ | kind.__optional_keys__


def wire(config: Config, line: dict[str, Any]) -> dict[str, Any]:
    job = parse_job({"custom_id": "j", "model": "haiku"} | line, config)
    model = config.models["haiku"]
    body = wire_body(job, model, config.providers[model.provider])
    valid_request(body)
    return body


def test_system_parts_images_and_cap(config: Config) -> None:
    body = wire(
        config,
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "developer", "content": [{"type": "text", "text": "and kind"}]},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": PNG}},
                        {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}},
                    ],
                },
            ],
            "max_completion_tokens": 50,
            "temperature": 0.5,
            "stop": "END",
            "user": "u-1",
        },
    )
    assert body["system"] == [
        {"type": "text", "text": "be brief"},
        {"type": "text", "text": "and kind"},
    ]
    assert body["max_tokens"] == 50
    assert body["stop_sequences"] == ["END"]
    assert body["metadata"] == {"user_id": "u-1"}
    assert [m["role"] for m in body["messages"]] == ["user"]
    image, url = body["messages"][0]["content"][1:]
    assert image["source"] == {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
    assert url["source"] == {"type": "url", "url": "https://x.test/a.jpg"}
    assert "max_completion_tokens" not in body and "stream_options" not in body


def test_the_output_cap_is_always_sent(config: Config) -> None:
    body = wire(config, {"messages": [{"role": "user", "content": "hi"}]})
    assert body["max_tokens"] == config.models["haiku"].reserve_max_tokens


def calling_weather(*cities: str) -> dict[str, Any]:
    """An assistant turn that calls the weather tool for each city (ids c1, c2, ...)."""
    calls = [
        {
            "id": f"c{number}",
            "type": "function",
            "function": {"name": "weather", "arguments": json.dumps({"city": city})},
        }
        for number, city in enumerate(cities, 1)
    ]
    return {"role": "assistant", "content": None, "tool_calls": calls}


def test_tools_and_a_tool_call_history(config: Config) -> None:
    weather = {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "the weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    body = wire(
        config,
        {
            "messages": [
                {"role": "user", "content": "weather in Oslo and Rome?"},
                calling_weather("Oslo", "Rome"),
                {"role": "tool", "tool_call_id": "c1", "content": "cold"},
                {
                    "role": "tool",
                    "tool_call_id": "c2",
                    "content": [{"type": "text", "text": "warm"}],
                },
                {"role": "user", "content": "so?"},
            ],
            "tools": [weather],
            "tool_choice": "required",
            "parallel_tool_calls": False,
            "stream": True,
        },
    )
    assert body["tools"] == [
        {
            "name": "weather",
            "description": "the weather",
            "input_schema": weather["function"]["parameters"],  # type: ignore[index]
        }
    ]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][1]["content"] == [
        {"type": "tool_use", "id": "c1", "name": "weather", "input": {"city": "Oslo"}},
        {"type": "tool_use", "id": "c2", "name": "weather", "input": {"city": "Rome"}},
    ]
    results = body["messages"][2]["content"]
    assert [b["type"] for b in results] == ["tool_result", "tool_result", "text"]
    assert results[0] == {"type": "tool_result", "tool_use_id": "c1", "content": "cold"}
    assert body["stream"] is True


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ({"type": "function", "function": {"name": "f"}}, {"type": "tool", "name": "f"}),
    ],
)
def test_tool_choice(choice: Any, expected: dict[str, Any]) -> None:
    body = chat_to_messages(
        {
            "model": "m",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": choice,
        }
    )
    assert body["tool_choice"] == expected
    valid_request(body)


def test_a_cache_breakpoint_becomes_cache_control(config: Config) -> None:
    part = {"type": "text", "text": "long context", "prompt_cache_breakpoint": {"mode": "explicit"}}
    body = wire(config, {"messages": [{"role": "user", "content": [part]}]})
    assert body["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"seed": 7}, "seed"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"temperature": 1.5}, "temperature"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {}},
                }
            },
            "response_format.type",
        ),
        ({"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "messages[0].name"),
        (
            {"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}]},
            "messages[1].role",
        ),
        (
            {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
            "messages[1].role",
        ),
    ],
)
def test_fields_without_an_equivalent_are_refused_at_submit(
    config: Config, line: dict[str, Any], field: str
) -> None:
    data = {"custom_id": "job-7", "model": "haiku", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(JobError) as caught:
        check_job(parse_job(data | line, config), config)
    assert caught.value.field == field
    assert "job 'job-7'" in str(caught.value)
    assert "Anthropic" in str(caught.value)


def test_submit_refuses_them_naming_line_job_and_field(config: Config, tmp_path: Path) -> None:
    ok = {"custom_id": "a", "model": "haiku", "prompt": "x"}
    line = {
        "custom_id": "b",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "haiku", "messages": [{"role": "user", "content": "x"}], "n": 3},
    }
    path = tmp_path / "jobs.jsonl"
    path.write_text(json.dumps(ok) + "\n" + json.dumps(line) + "\n")
    plan = plan_file(path, config, "b1", Priority.normal)
    assert (plan.valid, plan.invalid) == (1, 1)
    assert str(plan.errors[0]).startswith("line 2, job 'b': n: Anthropic answers one choice")
    assert [job.custom_id for job in iter_jobs(path, config, "b1")] == ["a"]


def test_the_same_fields_still_go_to_an_openai_provider(config: Config) -> None:
    job = parse_job(
        {
            "custom_id": "o",
            "model": "gpt-4.1",
            "messages": [{"role": "user", "content": "x"}],
            "n": 2,
        },
        config,
    )
    model = config.models["gpt-4.1"]
    assert wire_body(job, model, config.providers["openai"])["n"] == 2


def test_untranslatable_names_its_field() -> None:
    with pytest.raises(Untranslatable) as caught:
        chat_to_messages(
            {
                "model": "m",
                "max_tokens": 1,
                "messages": [{"role": "user", "content": "x"}],
                "frobnicate": 1,
            }
        )
    assert caught.value.field == "frobnicate"


MESSAGE = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-haiku-4-5",
    "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
        {"type": "text", "text": "Let me check. "},
        {"type": "text", "text": "One moment."},
        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 10,
        "output_tokens": 20,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 1000,
    },
}


def test_a_message_becomes_a_valid_chat_completion() -> None:
    AnthropicMessage.model_validate(MESSAGE)
    body = message_to_completion(MESSAGE, created=1700000000)
    completion = ChatCompletion.model_validate(body)
    choice = completion.choices[0]
    assert choice.message.content == "Let me check. One moment."
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [  # type: ignore[union-attr]
        ("toolu_1", "weather", {"city": "Oslo"})
    ]
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (1110, 20)
    assert completion.usage.total_tokens == 1130
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 1000


@pytest.mark.parametrize(
    ("stop", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("refusal", "content_filter"),
    ],
)
def test_stop_reasons(stop: str, finish: str) -> None:
    message = MESSAGE | {"stop_reason": stop, "content": [{"type": "text", "text": "x"}]}
    AnthropicMessage.model_validate(message)
    completion = ChatCompletion.model_validate(message_to_completion(message, created=1))
    assert completion.choices[0].finish_reason == finish
    assert completion.choices[0].message.tool_calls is None


def test_result_body_keeps_an_openai_answer_and_translates_a_message(config: Config) -> None:
    job = parse_job({"custom_id": "a", "model": "haiku", "prompt": "x"}, config)
    native = {"choices": []}
    assert result_body(job, native, config.providers["openai"]) is native
    translated = result_body(job, MESSAGE, config.providers["claude"], created=5)
    assert translated["created"] == 5 and translated["object"] == "chat.completion"


def test_sampling_is_refused_under_the_version_that_refuses_it() -> None:
    data = anthropic_config()
    data["providers"]["claude"]["anthropic_version"] = "2026-10-21"
    config = parse_config(data)
    line = {"custom_id": "t", "model": "haiku", "prompt": "x", "temperature": 1.0}
    with pytest.raises(JobError, match=r"temperature: anthropic-version 2026-10-21"):
        check_job(parse_job(line, config), config)
    job = parse_job({"custom_id": "t", "model": "haiku", "prompt": "x"}, config)
    body = wire_body(job, config.models["haiku"], config.providers["claude"])
    valid_request(body)
    assert "temperature" not in body


def test_a_job_sent_straight_to_a_queue_is_refused_at_intake(config: Config) -> None:
    """The worker checks what submit checks: a producer's job for an Anthropic model with
    n > 1 is an invalid job (never sent), naming the job and the field."""
    body = {"custom_id": "q1", "model": "haiku", "prompt": "x", "n": 2}
    intake = read_record(record(body, sent=NOW), config, RESOURCES, NoStore())
    assert intake.job is None and intake.error is not None
    assert (intake.error.field, intake.error.custom_id) == ("n", "q1")


@pytest.mark.parametrize(
    "messages",
    [
        pytest.param([{"role": "user", "content": ""}], id="empty_user"),
        pytest.param([{"role": "system", "content": ""}, {"role": "user", "content": "hi"}],
                     id="empty_system"),
        pytest.param([{"role": "user", "content": [{"type": "text", "text": "  "}]}],
                     id="whitespace_part"),
    ],
)  # fmt: skip
def test_openai_job_for_anthropic_is_refused_at_submit_or_sent_valid(
    config: Config, messages: list[dict[str, Any]]
) -> None:
    """OpenAI accepts empty and whitespace-only content; Anthropic refuses the translated
    request with a 400. chatbatch must refuse the job at submit (naming it) or send a
    request Anthropic takes -- it does neither: the text goes as an empty or blank block."""
    job = parse_job({"custom_id": "e", "model": "haiku", "messages": messages}, config)
    try:
        check_job(job, config)
    except JobError:
        return
    body = wire_body(job, config.models["haiku"], config.providers["claude"])
    texts = [body["system"]] if isinstance(body.get("system"), str) else body.get("system") or []
    for message in body["messages"]:
        content = message["content"]
        texts += [content] if isinstance(content, str) else content
    for text in texts:
        value = text if isinstance(text, str) else text.get("text")
        assert value is None or value.strip(), f"sent {body} (Anthropic refuses it)"


def test_openai_job_with_five_cache_breakpoints_for_anthropic_is_refused_at_submit(
    config: Config,
) -> None:
    """Each prompt_cache_breakpoint becomes a cache_control block; Anthropic refuses more
    than 4 ("A maximum of 4 blocks with cache_control may be provided. Found 5."). The job
    is accepted at submit and the request sent is one Anthropic refuses."""
    parts = [{"type": "text", "text": f"part {i}", "prompt_cache_breakpoint": {"mode": "explicit"}}
             for i in range(5)]  # fmt: skip
    job = parse_job({"custom_id": "b", "model": "haiku",
                     "messages": [{"role": "user", "content": parts}]}, config)  # fmt: skip
    try:
        check_job(job, config)
    except JobError:
        return
    body = wire_body(job, config.models["haiku"], config.providers["claude"])
    marks = json.dumps(body).count('"cache_control"')
    assert marks <= 4, f"{marks} cache_control blocks sent: Anthropic refuses the request"


@pytest.mark.parametrize("content", ["", " ", []])
def test_an_assistant_message_with_neither_content_nor_calls_is_refused(
    config: Config, content: Any
) -> None:
    """Anthropic refuses an empty message (but a final assistant one, which chatbatch
    refuses as a prefill): refused at submit naming the line's message."""
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": content},
                {"role": "user", "content": "and?"}]  # fmt: skip
    job = parse_job({"custom_id": "e", "model": "haiku", "messages": messages}, config)
    with pytest.raises(JobError) as caught:
        check_job(job, config)
    assert caught.value.field == "messages[1].content"


def test_an_empty_text_beside_tool_calls_is_dropped_not_refused(config: Config) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    body = wire(config, {"messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "r"},
    ], "tools": [{"type": "function", "function": {"name": "f"}}]})  # fmt: skip
    assert [b["type"] for b in body["messages"][1]["content"]] == ["tool_use"]
