"""Anthropic Message Batches lines: the params mirror the anthropic SDK's types key for key,
valid lines parse with their params kept as given, what cannot run is refused naming the
line and field, a file holds one form, and the worst case counts Anthropic's shapes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from anthropic import types as sdk
from anthropic.types import message_create_params
from pydantic import TypeAdapter

from chatbatch.client.submit import plan_file
from chatbatch.core.anthropic_params import (
    REFUSED_KEYS,
    AnthropicMessage,
    AnthropicMetadata,
    AnthropicParams,
    Base64Source,
    CacheControl,
    CitationsConfig,
    ImageBlock,
    RedactedThinkingBlock,
    SearchResultBlock,
    TextBlock,
    ThinkingAdaptive,
    ThinkingBlock,
    ThinkingDisabled,
    ThinkingEnabled,
    Tool,
    ToolChoiceAny,
    ToolChoiceAuto,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolResultBlock,
    ToolUseBlock,
    UrlSource,
)
from chatbatch.core.config import Config, Priority, parse_config
from chatbatch.core.job_lines import parse_job, parse_lines
from chatbatch.core.jobs import Job, JobError
from chatbatch.core.pricing import prompt_token_bound
from chatbatch.translate import wire_body
from tests.unit.test_anthropic_config import anthropic_config

MODEL = "gpt-4.1"  # has image_input_tokens
NO_IMAGES = "deepseek-chat"  # has none

MIRRORS: list[tuple[type[Any], Any]] = [
    (TextBlock, sdk.TextBlockParam),
    (ImageBlock, sdk.ImageBlockParam),
    (Base64Source, sdk.Base64ImageSourceParam),
    (UrlSource, sdk.URLImageSourceParam),
    (ToolUseBlock, sdk.ToolUseBlockParam),
    (ToolResultBlock, sdk.ToolResultBlockParam),
    (ThinkingBlock, sdk.ThinkingBlockParam),
    (RedactedThinkingBlock, sdk.RedactedThinkingBlockParam),
    (SearchResultBlock, sdk.SearchResultBlockParam),
    (CitationsConfig, sdk.CitationsConfigParam),
    (AnthropicMessage, sdk.MessageParam.__args__[0]),  # UserMessageParam
    (Tool, sdk.ToolParam),
    (ToolChoiceAuto, sdk.ToolChoiceAutoParam),
    (ToolChoiceAny, sdk.ToolChoiceAnyParam),
    (ToolChoiceTool, sdk.ToolChoiceToolParam),
    (ToolChoiceNone, sdk.ToolChoiceNoneParam),
    (ThinkingEnabled, sdk.ThinkingConfigEnabledParam),
    (ThinkingDisabled, sdk.ThinkingConfigDisabledParam),
    (ThinkingAdaptive, sdk.ThinkingConfigAdaptiveParam),
    (AnthropicMetadata, sdk.MetadataParam),
    (CacheControl, sdk.CacheControlEphemeralParam),
]
# documented by Anthropic's API reference, no longer declared by the 2.15 SDK
DOCUMENTED_ONLY = {"temperature", "top_p", "top_k"}


@pytest.mark.parametrize(("ours", "theirs"), MIRRORS, ids=lambda t: getattr(t, "__name__", ""))
def test_blocks_and_options_mirror_the_sdk_key_for_key(ours: type[Any], theirs: Any) -> None:
    assert set(ours.model_fields) == set(theirs.__annotations__)


def test_every_key_of_message_create_params_is_read_or_refused_with_a_reason() -> None:
    theirs = set(message_create_params.MessageCreateParamsNonStreaming.__annotations__)
    ours = set(AnthropicParams.model_fields)
    assert theirs - ours == set(REFUSED_KEYS)
    assert ours - theirs == DOCUMENTED_ONLY


def line(custom_id: str = "a", **params: Any) -> dict[str, Any]:
    say = [{"role": "user", "content": "hi"}]
    return {
        "custom_id": custom_id,
        "params": {"model": MODEL, "max_tokens": 50, "messages": say} | params,
    }


def refused(data: dict[str, Any], config: Config) -> JobError:
    with pytest.raises(JobError) as err:
        parse_job(data, config, seq=1)
    return err.value


FULL = line(
    "request 1/ünï",  # wider than Anthropic's [a-zA-Z0-9_-]{1,64}
    system=[
        {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    ],
    messages=[
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Looking."},
                {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Paris"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "t1",
                    "content": [{"type": "text", "text": "sun"}],
                },
                {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
                {"type": "text", "text": "and this?"},
            ],
        },
    ],
    stop_sequences=["END", "STOP"],
    temperature=0.5,
    top_p=0.9,
    tools=[{"name": "weather", "description": "d", "input_schema": {"type": "object"}}],
    tool_choice={"type": "tool", "name": "weather", "disable_parallel_tool_use": True},
    thinking={"type": "disabled"},
    metadata={"user_id": "u-1"},
    service_tier="standard_only",
    cache_control={"type": "ephemeral"},
    stream=False,  # a Message Batches request never streams
) | {"priority": "high", "metadata": {"team": "x"}, "cache": True, "batch_id": "b-1"}


def test_a_valid_line_parses_with_its_params_kept_as_given(config: Config) -> None:
    job = parse_job(json.loads(json.dumps(FULL)), config, seq=3)
    assert job.form == "anthropic" and job.native_params == FULL["params"]
    assert (job.custom_id, job.priority, job.metadata, job.cache) == (
        "request 1/ünï",
        "high",
        {"team": "x"},
        True,
    )
    assert job.max_tokens == 50 and not job.stream
    # read back from its SQS body: the same job
    assert parse_job(json.loads(job.to_line()), config) == job
    body = job.request_body(config.models[MODEL])
    assert body["messages"][0] == {
        "role": "system",
        "content": [{"type": "text", "text": "Be brief."}],
    }
    assert body["stop"] == ["END", "STOP"] and body["user"] == "u-1"
    assert body["service_tier"] == "default" and body["parallel_tool_calls"] is False
    assert body["tool_choice"] == {"type": "function", "function": {"name": "weather"}}


def test_max_tokens_is_required_as_at_anthropic(config: Config) -> None:
    data = line()
    del data["params"]["max_tokens"]
    err = refused(data, config)
    assert err.field == "params.max_tokens" and "requires max_tokens" in err.message


@pytest.mark.parametrize(
    ("params", "field", "says"),
    [
        ({"speed": "fast"}, "params", "speed is not accepted"),
        ({"top_k": 5}, "params.top_k", "cannot honour"),
        (
            {"thinking": {"type": "enabled", "budget_tokens": 2000}, "max_tokens": 4000},
            "params.thinking",
            "cannot honour",
        ),
        (
            {"thinking": {"type": "enabled", "budget_tokens": 2000}},
            "params",
            "less than max_tokens",
        ),
        (
            {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
            "params",
            "server tool",
        ),
        ({"max_tokens": 10**6}, "params.max_tokens", "max_output_tokens"),
        ({"model": "nope"}, "params.model", "unknown model"),
        ({"stop_sequences": list("abcde")}, "params.stop_sequences", "at most 4"),
        ({"stream": True}, "params.stream", "does not stream"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}],
                    }
                ]
            },
            "params.messages[0].content[0].source",
            "Files API",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "server_tool_use", "id": "s"}]}]},
            "params.messages[0].content",
            "bill per use",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "Capital of France, as JSON?"},
                    {"role": "assistant", "content": '{"capital": "'},
                ]
            },
            "params.messages[1]",
            "prefill",
        ),
        (  # an empty assistant turn before the last: Anthropic refuses it too
            {
                "system": "Be brief.",
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": []},
                    {"role": "user", "content": "again"},
                ],
            },
            "params.messages[1]",
            "content is null",
        ),
        ({"tool_choice": {"type": "tool"}}, "params.tool_choice.name", "required"),
        ({"thinking": {"type": "enabled"}}, "params.thinking.budget_tokens", "required"),
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
            "params.messages[0].content",
            "billed by its pages",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": [{"type": "thinking", "thinking": "t", "signature": "s"}],
                    }
                ]
            },
            "params.messages[0].content[0]",
            "thinking block",
        ),
    ],
)
def test_what_cannot_run_is_refused_naming_the_field(
    config: Config, params: dict[str, Any], field: str, says: str
) -> None:
    err = refused(line(**params), config)
    assert err.field == field and says in err.message, err


def test_an_image_needs_the_models_image_worst_case(config: Config) -> None:
    image = {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}
    data = line(model=NO_IMAGES, messages=[{"role": "user", "content": [image]}])
    err = refused(data, config)
    assert err.field == "params.messages[0].content" and "image_input_tokens" in err.message


def test_a_file_mixing_forms_is_refused_naming_the_first_line_of_the_other(config: Config) -> None:
    lines = [
        json.dumps(line("a")),
        "",
        json.dumps(line("b")),
        json.dumps({"custom_id": "c", "prompt": "x"}),
    ]
    parsed = dict(parse_lines(lines, config))
    assert isinstance(parsed[1], Job) and isinstance(parsed[3], Job)
    err = parsed[4]
    assert isinstance(err, JobError) and err.line == 4
    assert "line 1 is an Anthropic Message Batches line" in str(err)


def test_the_worst_case_counts_system_tools_images_and_tool_history(config: Config) -> None:
    model = config.models[MODEL]
    job = parse_job(FULL, config, seq=1)
    native = prompt_token_bound(FULL["params"], model.image_input_tokens or 0)
    assert job.worst_case_usage(model).prompt_tokens >= native
    assert native >= model.image_input_tokens  # the image at its worst case
    bigger = json.loads(json.dumps(FULL["params"]))
    bigger["messages"][1]["content"][1]["input"] = {"city": "x" * 1000}
    assert prompt_token_bound(bigger) >= prompt_token_bound(FULL["params"]) + 990
    longer = FULL["params"] | {"system": "s" * 500}
    assert prompt_token_bound(longer) >= prompt_token_bound(FULL["params"]) + 480
    assert job.worst_case_usage(model).completion_tokens == 50  # max_tokens, thinking inside


def test_chatbatchs_own_keys_beside_params_keep_their_names_in_errors(config: Config) -> None:
    err = refused(line() | {"role": "nope"}, config)
    assert err.field == "role" and "unknown role" in err.message
    err = refused(line() | {"priority": "urgent"}, config)
    assert err.field == "priority"


def test_a_prefilled_last_assistant_turn_is_refused_naming_the_turn(config: Config) -> None:
    """Anthropic continues a final assistant turn (a prefill, '{' to force JSON); a chat
    completion answers a new turn after it: the answer would differ, so it is refused."""
    data = line(
        messages=[
            {"role": "user", "content": "Give me the capital of France as JSON."},
            {"role": "assistant", "content": [{"type": "text", "text": '{"capital": "'}]},
        ]
    )
    err = refused(data, config)
    assert err.field == "params.messages[1]" and "prefill" in err.message


@pytest.mark.parametrize("empty", ["", []])
def test_an_empty_final_assistant_turn_is_dropped(config: Config, empty: Any) -> None:
    """Anthropic accepts an empty final assistant turn and answers a new turn, as a chat
    completion does: it is dropped from the translation (its errors would have named
    ``body.messages[2]``, a field of the translation, not of the line)."""
    data = line(
        system="Be brief.",
        messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": empty}],
    )
    job = parse_job(data, config, seq=1)
    assert job.native_params == data["params"]
    sent = job.request_body(config.models[MODEL])["messages"]
    assert sent == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]


def test_a_search_result_block_is_prompt_text_counted_in_the_worst_case(config: Config) -> None:
    """A search_result block is client-supplied text billed as prompt tokens: accepted,
    sent as one text part on an OpenAI-kind provider, every byte in the worst case."""
    block = {
        "type": "search_result",
        "source": "https://example.com/a",
        "title": "A",
        "content": [{"type": "text", "text": "Paris is the capital of France."}],
        "citations": {"enabled": False},
    }
    data = line(
        messages=[{"role": "user", "content": [block, {"type": "text", "text": "capital?"}]}]
    )
    job = parse_job(data, config, seq=1)
    model = config.models[MODEL]
    part = job.request_body(model)["messages"][0]["content"][0]
    assert part["type"] == "text"
    assert all(s in part["text"] for s in ("https://example.com/a", "Paris is the capital"))
    longer = json.loads(json.dumps(data["params"]))
    longer["messages"][0]["content"][0]["content"][0]["text"] += "x" * 500
    assert prompt_token_bound(longer) >= prompt_token_bound(data["params"]) + 500
    assert job.worst_case_usage(model).prompt_tokens >= prompt_token_bound(data["params"])
    cited = json.loads(json.dumps(data))
    cited["params"]["messages"][0]["content"][0]["citations"] = {"enabled": True}
    err = refused(cited, config)
    assert err.field == "params.messages[0].content[0].citations"
    assert "cannot honour" in err.message


def test_a_system_message_inside_messages_is_accepted_as_the_sdk_declares_it(
    config: Config,
) -> None:
    """The 2.15 SDK's ``MessageParam`` holds ``SystemMessageParam`` (role ``system``): it
    is accepted and sent as a system message in its place."""
    turns = [
        {"role": "user", "content": "hi"},
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "again"},
    ]
    assert TypeAdapter(list[sdk.MessageParam]).validate_python(turns)
    job = parse_job(line(messages=turns), config, seq=1)
    sent = job.request_body(config.models[MODEL])["messages"]
    assert sent[1] == {"role": "system", "content": "Answer in French."}


def test_a_file_of_only_invalid_anthropic_lines_is_an_anthropic_batch(
    config: Config, tmp_path: Path
) -> None:
    """A batch's form is its lines' (``line_form``), valid or not: a file whose Anthropic
    lines are all refused (every one without max_tokens, the commonest first mistake)
    has its errors written in Anthropic's results format, not OpenAI's error file."""
    path = tmp_path / "jobs.jsonl"
    lines = [
        {
            "custom_id": f"r{i}",
            "params": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        }
        for i in range(2)
    ]
    path.write_text("not json\n" + "".join(json.dumps(x) + "\n" for x in lines))
    plan = plan_file(path, config, "b-1", Priority.normal)
    assert (plan.valid, plan.invalid) == (0, 3)
    assert plan.form == "anthropic"


def test_native_line_with_search_results_as_a_tool_result_is_accepted() -> None:
    """The anthropic SDK's ToolResultBlockParam content takes SearchResultBlockParam (search
    results returned by the caller's own search tool: the documented use of search_result
    blocks). chatbatch accepts a search_result block at the top level of a message and
    bounds it as text, and README lists no refusal of it inside a tool_result, yet refuses
    the line ("does not match any of the expected tags: 'text', 'image'")."""
    result = {"type": "search_result", "source": "https://e.x/a", "title": "A",
              "content": [{"type": "text", "text": "a fact"}]}  # fmt: skip
    params = {
        "model": "haiku",
        "max_tokens": 50,
        "tools": [{"name": "search", "input_schema": {"type": "object"}}],
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "t1", "name": "search", "input": {"q": "x"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": [result]}]},
        ],
    }  # fmt: skip
    config = parse_config(anthropic_config())
    job = parse_job({"custom_id": "sr", "params": params}, config)
    body = wire_body(job, config.models["haiku"], config.providers["claude"])
    assert body["messages"] == params["messages"]


def test_a_roles_system_prompt_goes_into_a_line_without_system_for_either_kind() -> None:
    """A line's ``role`` adds its system prompt to params without ``system`` (sent as given
    to Anthropic's API, translated for an OpenAI-kind one); a line's own system stays."""
    config = parse_config(anthropic_config())
    prompt = config.roles["classify"].system_prompt
    for model in ("haiku", "deepseek-chat"):
        line = {
            "custom_id": "r",
            "role": "classify",
            "params": {
                "model": model,
                "max_tokens": 8,
                "messages": [{"role": "user", "content": "x"}],
            },
        }
        job = parse_job(line, config, seq=1)
        assert job.native_params is not None and job.native_params["system"] == prompt
        again = parse_job(json.loads(job.to_line()), config)
        assert again == job  # read back, the prompt is not added twice
        sent = wire_body(job, config.models[model], config.providers[config.models[model].provider])
        assert sent.get("system") == prompt or sent["messages"][0] == {
            "role": "system",
            "content": prompt,
        }
        own = {**line, "params": {**line["params"], "system": "mine"}}
        assert parse_job(own, config, seq=1).native_params["system"] == "mine"  # type: ignore[index]
