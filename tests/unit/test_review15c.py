"""Review 15c: failing tests for the native Anthropic wire (kind anthropic provider)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chatbatch.core.config import Config, parse_config
from chatbatch.core.job_lines import parse_job
from chatbatch.local.simulator import Engine, SimulatorSettings
from chatbatch.translate import wire_body
from tests.unit.test_anthropic_config import anthropic_config

CONFIG: Config = parse_config(anthropic_config())
HEADERS = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 50,
    "messages": [{"role": "user", "content": "hi"}],
}


# --- money: a stream's usage ------------------------------------------------------------


# --- money: 1-hour cache writes ---------------------------------------------------------


# --- the simulator accepts what Anthropic accepts --------------------------------------


def _simulate(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    engine = Engine(SimulatorSettings(config_models=False))
    reply = engine.handle("POST", "/v1/messages", dict(HEADERS), json.dumps(body).encode())
    return reply.status, json.loads(reply.body)


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"cache_control": {"type": "ephemeral"}}, id="top_level_cache_control"),
        pytest.param(
            {"messages": [{"role": "user", "content": [
                {"type": "search_result", "source": "https://e.x/a", "title": "A",
                 "content": [{"type": "text", "text": "fact"}]},
                {"type": "text", "text": "use it"}]}]},
            id="search_result_block",
        ),
        pytest.param(
            {"messages": [{"role": "system", "content": "be brief"},
                          {"role": "user", "content": "hi"}]},
            id="system_message_in_messages",
        ),
    ],
)  # fmt: skip
def test_simulator_accepts_native_params_anthropic_accepts(extra: dict[str, Any]) -> None:
    """Both are declared by the anthropic SDK 2.15's MessageCreateParams (top-level
    cache_control; SearchResultBlockParam in a user message), accepted by chatbatch's
    AnthropicParams and sent as given to a kind anthropic provider: the simulator must
    take them as Anthropic does, or local run errors every such line."""
    line = {"custom_id": "s", "params": {**BODY, "model": "haiku"} | extra}
    job = parse_job(line, CONFIG)
    body = wire_body(job, CONFIG.models["haiku"], CONFIG.providers["claude"])
    status, answer = _simulate(body)
    assert status == 200, answer


# --- the simulator refuses what Anthropic refuses --------------------------------------

USER = {"role": "user", "content": "hi"}
TOOLS = [{"name": "f", "input_schema": {"type": "object"}}]
THINKING = {"type": "enabled", "budget_tokens": 1024}
EPHEMERAL = {"type": "ephemeral"}


@pytest.mark.parametrize(
    ("params", "anthropic_says"),
    [
        pytest.param({"messages": [{"role": "user", "content": ""}]},
                     "messages.0: all messages must have non-empty content except for the "
                     "optional final assistant message", id="empty_user_content"),
        pytest.param({"messages": [{"role": "user", "content": [{"type": "text", "text": " \n"}]}]},
                     "messages: text content blocks must contain non-whitespace text",
                     id="whitespace_only_text_block"),
        pytest.param({"system": [{"type": "text", "text": ""}], "messages": [USER]},
                     "system: text content blocks must be non-empty", id="empty_system_block"),
        pytest.param({"messages": [USER, {"role": "assistant", "content": "The answer is "}]},
                     "messages: final assistant content cannot end with trailing whitespace",
                     id="prefill_trailing_whitespace"),
        pytest.param({"max_tokens": 2000, "thinking": THINKING, "temperature": 0.2,
                      "messages": [USER]},
                     "temperature may only be set to 1 when thinking is enabled",
                     id="thinking_with_temperature"),
        pytest.param({"max_tokens": 2000, "thinking": THINKING, "tools": TOOLS,
                      "tool_choice": {"type": "any"}, "messages": [USER]},
                     "Thinking may not be enabled when tool_choice forces tool use",
                     id="thinking_with_forced_tool"),
        pytest.param({"messages": [{"role": "user", "content": [
                         {"type": "text", "text": f"part {i}", "cache_control": EPHEMERAL}
                         for i in range(5)]}]},
                     "A maximum of 4 blocks with cache_control may be provided. Found 5.",
                     id="five_cache_breakpoints"),
        pytest.param({"tools": TOOLS + TOOLS, "messages": [USER]},
                     "tools: Tool names must be unique.", id="duplicate_tool_names"),
        pytest.param({"tools": TOOLS, "messages": [
                         USER,
                         {"role": "assistant", "content": [
                             {"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
                         {"role": "user", "content": [
                             {"type": "text", "text": "here it is"},
                             {"type": "tool_result", "tool_use_id": "t1", "content": "r"}]}]},
                     "tool_result blocks must come first in the user message's content",
                     id="tool_result_after_text"),
    ],
)  # fmt: skip
def test_simulator_refuses_what_anthropic_refuses(
    params: dict[str, Any], anthropic_says: str
) -> None:
    """Documented refusals of Anthropic's Messages API (the message is Anthropic's 400):
    the simulator answers 200, so local run and every test pass on a line Anthropic
    refuses."""
    body = {"model": "claude-haiku-4-5", "max_tokens": 50} | params
    status, answer = _simulate(body)
    assert status == 400, f"Anthropic: 400 {anthropic_says!r}; simulator: {status} {answer}"


@pytest.mark.parametrize(
    "messages",
    [
        pytest.param([{"role": "user", "content": ""}], id="empty_user"),
        pytest.param([{"role": "system", "content": ""}, USER], id="empty_system"),
        pytest.param([{"role": "user", "content": [{"type": "text", "text": "  "}]}],
                     id="whitespace_part"),
    ],
)  # fmt: skip
def test_openai_job_for_anthropic_is_refused_at_submit_or_sent_valid(
    messages: list[dict[str, Any]],
) -> None:
    """OpenAI accepts empty and whitespace-only content; Anthropic refuses the translated
    request with a 400. chatbatch must refuse the job at submit (naming it) or send a
    request Anthropic takes -- it does neither: the text goes as an empty or blank block."""
    from chatbatch.core.jobs import JobError
    from chatbatch.translate import check_job

    job = parse_job({"custom_id": "e", "model": "haiku", "messages": messages}, CONFIG)
    try:
        check_job(job, CONFIG)
    except JobError:
        return
    body = wire_body(job, CONFIG.models["haiku"], CONFIG.providers["claude"])
    texts = [body["system"]] if isinstance(body.get("system"), str) else body.get("system") or []
    for message in body["messages"]:
        content = message["content"]
        texts += [content] if isinstance(content, str) else content
    for text in texts:
        value = text if isinstance(text, str) else text.get("text")
        assert value is None or value.strip(), f"sent {body} (Anthropic refuses it)"


def test_native_line_with_temperature_is_refused_under_a_version_that_refuses_sampling() -> None:
    """chatbatch's own rule (translate.chat_to_messages): anthropic-version 2026-10-21
    refuses temperature, top_p and top_k, so an OpenAI-form job carrying one is refused at
    submit naming the field. An Anthropic-form line with the same temperature, for the same
    provider, is accepted and sent as given -- a request that provider refuses, found only
    after it was queued and sent."""
    from chatbatch.core.jobs import JobError
    from chatbatch.translate import check_job

    data = anthropic_config()
    data["providers"]["claude"]["anthropic_version"] = "2026-10-21"
    config = parse_config(data)
    openai_form = {"custom_id": "o", "model": "haiku", "temperature": 0.5,
                   "messages": [USER]}  # fmt: skip
    with pytest.raises(JobError, match="temperature"):
        check_job(parse_job(openai_form, config), config)
    native = {"custom_id": "n", "params": {**BODY, "model": "haiku", "temperature": 0.5}}
    with pytest.raises(JobError, match="temperature"):
        check_job(parse_job(native, config), config)


def test_openai_job_with_five_cache_breakpoints_for_anthropic_is_refused_at_submit() -> None:
    """Each prompt_cache_breakpoint becomes a cache_control block; Anthropic refuses more
    than 4 ("A maximum of 4 blocks with cache_control may be provided. Found 5."). The job
    is accepted at submit and the request sent is one Anthropic refuses."""
    from chatbatch.core.jobs import JobError
    from chatbatch.translate import check_job

    parts = [{"type": "text", "text": f"part {i}", "prompt_cache_breakpoint": {"mode": "explicit"}}
             for i in range(5)]  # fmt: skip
    job = parse_job({"custom_id": "b", "model": "haiku",
                     "messages": [{"role": "user", "content": parts}]}, CONFIG)  # fmt: skip
    try:
        check_job(job, CONFIG)
    except JobError:
        return
    body = wire_body(job, CONFIG.models["haiku"], CONFIG.providers["claude"])
    marks = json.dumps(body).count('"cache_control"')
    assert marks <= 4, f"{marks} cache_control blocks sent: Anthropic refuses the request"


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
            USER,
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "t1", "name": "search", "input": {"q": "x"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": [result]}]},
        ],
    }  # fmt: skip
    job = parse_job({"custom_id": "sr", "params": params}, CONFIG)
    body = wire_body(job, CONFIG.models["haiku"], CONFIG.providers["claude"])
    assert body["messages"] == params["messages"]
