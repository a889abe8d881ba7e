"""Valid OpenAI request lines pass unchanged: the job models mirror the openai SDK's request
types key for key, SDK-built bodies parse in both line forms and are sent as given, and the
worst case counts every billed field (content parts, images, tools, tool calls)."""

from __future__ import annotations

import json
from typing import Any, get_args, get_type_hints

import openai.types.chat as sdk
import pytest
from openai.types.chat import completion_create_params

from chatbatch.core.config import Config
from chatbatch.core.job_lines import ChatBody, ShortLine, parse_line
from chatbatch.core.messages import (
    REFUSED_PARTS,
    CalledFunction,
    CustomCall,
    CustomToolCall,
    FunctionToolCall,
    ImagePart,
    ImageUrl,
    Message,
    RefusalPart,
    TextPart,
)
from chatbatch.core.pricing import estimate_prompt_tokens, prompt_token_bound
from chatbatch.core.request_params import ALLOWED, REFUSED
from tests.unit.sdk_bodies import bodies

MESSAGE_PARAMS = [
    sdk.ChatCompletionSystemMessageParam,
    sdk.ChatCompletionDeveloperMessageParam,
    sdk.ChatCompletionUserMessageParam,
    sdk.ChatCompletionAssistantMessageParam,
    sdk.ChatCompletionToolMessageParam,
    sdk.ChatCompletionFunctionMessageParam,
]
# chatbatch model <- the SDK type it mirrors, key for key
MIRRORS: list[tuple[type[Any], Any]] = [
    (TextPart, sdk.ChatCompletionContentPartTextParam),
    (ImagePart, sdk.ChatCompletionContentPartImageParam),
    (ImageUrl, sdk.chat_completion_content_part_image_param.ImageURL),
    (RefusalPart, sdk.ChatCompletionContentPartRefusalParam),
    (FunctionToolCall, sdk.ChatCompletionMessageFunctionToolCallParam),
    (CalledFunction, sdk.chat_completion_message_function_tool_call_param.Function),
    (CustomToolCall, sdk.ChatCompletionMessageCustomToolCallParam),
    (CustomCall, sdk.chat_completion_message_custom_tool_call_param.Custom),
]
REFUSED_MESSAGE_KEYS = {"audio"}  # an earlier audio answer: billed at the audio price


@pytest.mark.parametrize("param", MESSAGE_PARAMS, ids=lambda p: p.__name__)
def test_every_key_of_every_sdk_message_type_is_known(param: Any):
    keys = set(param.__annotations__) - REFUSED_MESSAGE_KEYS
    assert keys <= set(Message.model_fields)


@pytest.mark.parametrize(("ours", "theirs"), MIRRORS, ids=lambda t: t.__name__)
def test_content_parts_and_tool_calls_mirror_the_sdk(ours: type[Any], theirs: Any):
    assert set(ours.model_fields) == set(theirs.__annotations__)


def test_every_content_part_kind_is_accepted_or_refused_with_a_reason():
    kinds = {
        get_args(get_args(get_type_hints(t, include_extras=True)["type"])[0])[0]
        for t in (
            sdk.ChatCompletionContentPartTextParam,
            sdk.ChatCompletionContentPartImageParam,
            sdk.ChatCompletionContentPartInputAudioParam,
            sdk.ChatCompletionContentPartRefusalParam,
        )
    } | {"file"}
    accepted = {"text", "image_url", "refusal"}
    assert kinds == accepted | set(REFUSED_PARTS)


def test_every_request_key_of_the_sdk_is_read_passed_or_refused_with_a_reason():
    keys = set(completion_create_params.CompletionCreateParamsNonStreaming.__annotations__)
    read = {"model", "messages", "max_tokens", "max_completion_tokens", "stream", "temperature"}
    assert keys <= read | set(ALLOWED) | set(REFUSED)
    # the typed keys of both forms are request keys (a short line's own are chatbatch's)
    assert set(ChatBody.model_fields) <= keys
    assert set(ShortLine.model_fields) - keys == {
        "custom_id", "batch_id", "priority", "role", "cache", "seq", "prompt", "deadline_h",
    }  # fmt: skip


def lines(body: dict[str, Any], custom_id: str) -> list[str]:
    batch = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions"}
    return [json.dumps(batch | {"body": body}), json.dumps({"custom_id": custom_id, **body})]


@pytest.mark.parametrize(("custom_id", "body"), bodies("gpt-4.1").items(), ids=str)
def test_sdk_built_lines_are_sent_unchanged_in_both_forms(
    config: Config, custom_id: str, body: dict[str, Any]
):
    for text in lines(body, custom_id):
        job = parse_line(text, config, line=1)
        assert job.custom_id == custom_id
        assert job.request_body(config.models["gpt-4.1"]) == body


def test_an_assistant_turn_that_leaves_content_out_is_sent_with_content_null(config: Config):
    call = {"id": "c", "type": "custom", "custom": {"name": "sql", "input": "select 1"}}
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [call]}]
    job = parse_line(json.dumps({"messages": messages}), config, line=1)
    sent = job.request_body(config.models[job.model])["messages"][1]
    assert sent == {"role": "assistant", "content": None, "tool_calls": [call]}


def body_of(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": list(messages), **fields}


def test_an_image_counts_at_the_models_image_tokens_in_the_bound_and_the_estimate():
    text = {"type": "text", "text": "look"}
    image = {"type": "image_url", "image_url": {"url": "https://x/" + "a" * 500}}
    plain = body_of({"role": "user", "content": [text]})
    pictured = body_of({"role": "user", "content": [text, image, image]})
    for count in (prompt_token_bound, estimate_prompt_tokens):
        # the URL's bytes are not what an image bills: its tiles are, at most image_tokens
        assert count(pictured, 1445) - count(plain, 1445) >= 2 * 1445
        assert count(pictured, 1445) - count(pictured, 0) == 2 * 1445


def test_tool_definitions_calls_and_refusals_count_in_the_bound():
    base = body_of({"role": "user", "content": "q"})
    bound = prompt_token_bound(base)
    big = "x" * 3000
    parts = [{"type": "text", "text": "q"}, {"type": "text", "text": big}]
    custom = {"id": "c", "type": "custom", "custom": {"name": "sql", "input": big}}
    function = {"name": "f", "arguments": json.dumps({"a": big})}
    tool = {"type": "function", "function": {"name": "f", "description": big}}
    grown = [
        body_of({"role": "user", "content": "q"}, tools=[tool]),
        body_of({"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [custom]}),
        body_of({"role": "user", "content": "q"}, {"role": "assistant", "function_call": function}),
        body_of({"role": "user", "content": "q"}, {"role": "assistant", "refusal": big}),
        body_of({"role": "user", "content": parts}),
        body_of({"role": "assistant", "content": [{"type": "refusal", "refusal": big}]}),
    ]  # fmt: skip
    for body in grown:
        assert prompt_token_bound(body) >= bound + 3000, body
        assert estimate_prompt_tokens(body) >= 3000 // 4, body
