"""The simulator's ``/v1/messages`` validates like Anthropic on its own, answers Messages
and streams that the anthropic SDK's types accept, bills prompt caching (written the first
time, read after), and speaks Anthropic's errors, headers and faults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from anthropic.types import Message

from chatbatch.core.config import parse_config
from chatbatch.core.job_lines import parse_job
from chatbatch.local import simulator
from chatbatch.local.simulator import Engine, SimulatorSettings
from chatbatch.local.simulator.replies import Reply
from chatbatch.local.simulator.settings import Fault, FaultKind
from chatbatch.provider.message_stream import MessageStream
from chatbatch.provider.sse import SSEParser
from chatbatch.translate import wire_body
from tests.unit.test_anthropic_config import anthropic_config

KEY = "sk-ant-sim"
HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
BODY: dict[str, Any] = {
    "model": "claude-haiku-4-5",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "hello there"}],
}


@pytest.fixture
def engine() -> Engine:
    return Engine(SimulatorSettings(config_models=False, api_key=KEY, keep_bodies=True))


def send(engine: Engine, body: Any, headers: dict[str, str] = HEADERS) -> tuple[Reply, Any]:
    reply = engine.handle("POST", "/v1/messages", dict(headers), json.dumps(body).encode())
    return reply, (json.loads(reply.body) if reply.body else None)


def test_a_valid_request_gets_a_message() -> None:
    engine = Engine(SimulatorSettings(config_models=False, api_key=KEY, rpm=100, tpm=10_000))
    reply, body = send(engine, BODY)
    assert reply.status == 200, body
    message = Message.model_validate(body)
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert reply.headers["request-id"].startswith("req_")
    assert "x-request-id" not in reply.headers
    assert reply.headers["anthropic-ratelimit-requests-limit"]
    assert reply.headers["anthropic-ratelimit-tokens-reset"].endswith("Z")
    stats = engine.stats()
    assert stats.requests == 1 and stats.billed_calls == 1
    assert stats.by_status == {"200": 1}


def anthropic_error(body: dict[str, Any]) -> tuple[str, str]:
    assert body["type"] == "error" and body["request_id"].startswith("req_")
    return body["error"]["type"], body["error"]["message"]


@pytest.mark.parametrize(
    ("headers", "status", "kind"),
    [
        ({"anthropic-version": "2023-06-01"}, 401, "authentication_error"),
        ({"x-api-key": "wrong", "anthropic-version": "2023-06-01"}, 401, "authentication_error"),
        ({"x-api-key": KEY}, 400, "invalid_request_error"),
        (
            {"authorization": f"Bearer {KEY}", "anthropic-version": "2023-06-01"},
            401,
            "authentication_error",
        ),
    ],
)
def test_the_key_and_version_headers_are_required(
    engine: Engine, headers: dict[str, str], status: int, kind: str
) -> None:
    reply, body = send(engine, BODY, headers)
    assert reply.status == status
    assert anthropic_error(body)[0] == kind


TOOL_USE = {"type": "tool_use", "id": "t1", "name": "f", "input": {}}


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"max_tokens": None}, "max_tokens: Field required"),
        (
            {"messages": [{"role": "tool", "content": "x"}, {"role": "user", "content": "y"}]},
            "messages.0.role",
        ),
        ({"n": 2}, "n: Extra inputs are not permitted"),
        ({"stream_options": {"include_usage": True}}, "stream_options: Extra inputs"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
                ]
            },
            "Input tag 'image_url'",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": [TOOL_USE]},
                    {"role": "user", "content": "b"},
                ]
            },
            "without `tool_result` blocks",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "zz", "content": "r"}],
                    }
                ]
            },
            "unexpected `tool_use_id`",
        ),
        ({"temperature": 1.5}, "temperature"),
    ],
)
def test_refused_like_anthropic(engine: Engine, change: dict[str, Any], words: str) -> None:
    body = {k: v for k, v in (BODY | change).items() if v is not None}
    reply, answer = send(engine, body)
    assert reply.status == 400
    kind, message = anthropic_error(answer)
    assert kind == "invalid_request_error" and words in message
    assert engine.stats().billed_calls == 0


def test_tools_and_a_paired_tool_history_are_accepted(engine: Engine) -> None:
    body = BODY | {
        "system": [{"type": "text", "text": "be brief"}],
        "tools": [{"name": "f", "input_schema": {"type": "object", "properties": {}}}],
        "tool_choice": {"type": "any"},
        "messages": [
            {"role": "user", "content": "call f"},
            {"role": "assistant", "content": [{"type": "text", "text": "ok"}, TOOL_USE]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "done"},
                    {"type": "text", "text": "and?"},
                ],
            },
        ],
    }
    reply, answer = send(engine, body)
    assert reply.status == 200, answer


def test_a_marked_prefix_is_written_then_read(engine: Engine) -> None:
    long = "the same long context " * 50
    body = BODY | {
        "system": [{"type": "text", "text": long, "cache_control": {"type": "ephemeral"}}],
    }
    _, first = send(engine, body)
    _, second = send(engine, body | {"messages": [{"role": "user", "content": "another question"}]})
    written = first["usage"]["cache_creation_input_tokens"]
    assert written > 200 and first["usage"]["cache_read_input_tokens"] == 0
    assert second["usage"]["cache_read_input_tokens"] == written
    assert second["usage"]["cache_creation_input_tokens"] == 0
    stats = engine.stats()
    assert stats.cache_write_tokens == written and stats.cached_tokens == written
    billed = sum(
        a["usage"][k]
        for a in (first, second)
        for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )
    assert stats.prompt_tokens == billed


def test_a_prefix_marked_for_an_hour_is_written_to_the_one_hour_cache(engine: Engine) -> None:
    """Up to the last block marked ttl "1h" the write goes to the 1-hour cache, the rest
    of the written prefix to the 5-minute one (usage.cache_creation splits them)."""
    hour = {"type": "ephemeral", "ttl": "1h"}
    body = BODY | {
        "system": [
            {"type": "text", "text": "the policy " * 50, "cache_control": hour},
            {"type": "text", "text": "today's notes " * 20, "cache_control": EPHEMERAL},
        ],
    }
    _, first = send(engine, body)
    Message.model_validate(first)
    usage = first["usage"]
    split = usage["cache_creation"]
    assert split["ephemeral_1h_input_tokens"] > 100 and split["ephemeral_5m_input_tokens"] > 20
    assert sum(split.values()) == usage["cache_creation_input_tokens"]
    assert engine.stats().cache_write_1h_tokens == split["ephemeral_1h_input_tokens"]


def read_stream(reply: Reply) -> dict[str, Any]:
    parser, stream = SSEParser(), MessageStream()
    for _, frame in reply.events or []:
        for event in parser.feed(frame):
            stream.add(event)
    return stream.result()


def test_a_stream_assembles_to_the_same_message(engine: Engine) -> None:
    _, plain = send(engine, BODY)
    engine.reset()
    reply, _ = send(engine, BODY | {"stream": True})
    assert reply.headers["content-type"].startswith("text/event-stream")
    streamed = Message.model_validate(read_stream(reply))
    assert streamed.content == Message.model_validate(plain).content
    assert streamed.usage.output_tokens == plain["usage"]["output_tokens"]


@pytest.mark.parametrize(
    ("fault", "status", "kind"),
    [
        (FaultKind.rate_limited, 429, "rate_limit_error"),
        (FaultKind.error_503, 529, "overloaded_error"),
        (FaultKind.error_500, 500, "api_error"),
        (FaultKind.bad_request, 400, "invalid_request_error"),
    ],
)
def test_faults_speak_anthropic(engine: Engine, fault: FaultKind, status: int, kind: str) -> None:
    engine.inject([Fault(kind=fault, retry_after_s=2)])
    reply, body = send(engine, BODY)
    assert reply.status == status
    assert anthropic_error(body)[0] == kind
    assert reply.headers["retry-after"] == "2"
    assert engine.stats().billed_calls == 0


def test_a_cut_stream_is_billed_and_has_no_message_stop(engine: Engine) -> None:
    engine.inject([Fault(kind=FaultKind.truncate)])
    reply, _ = send(engine, BODY | {"stream": True})
    frames = b"".join(frame for _, frame in reply.events or [])
    assert b"message_stop" not in frames
    assert engine.stats().billed_calls == 1


def test_a_rate_limit_is_anthropics_429() -> None:
    engine = Engine(SimulatorSettings(config_models=False, api_key=KEY, rpm=1))
    send(engine, BODY)
    reply, body = send(engine, BODY)
    assert reply.status == 429
    assert anthropic_error(body)[0] == "rate_limit_error"
    assert int(reply.headers["retry-after"]) >= 1
    assert reply.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert "retry-after-ms" not in reply.headers  # OpenAI's header, not Anthropic's


@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_without_usage_is_whole_and_billed(engine: Engine, stream: bool) -> None:
    engine.inject([Fault(kind=FaultKind.no_usage)])
    reply, body = send(engine, BODY | {"stream": stream})
    message = read_stream(reply) if stream else body
    assert not message.get("usage")
    assert message["content"][0]["text"]
    assert engine.stats().billed_calls == 1


def test_the_simulator_shares_no_code_with_what_it_checks() -> None:
    """An adversary: the simulator never imports the translation or the provider client
    (its only chatbatch import outside itself is the config file's model list)."""
    folder = Path(simulator.__file__).parent
    for path in folder.glob("*.py"):
        text = path.read_text()
        for banned in ("chatbatch.translate", "chatbatch.provider", "chatbatch.worker"):
            assert banned not in text, f"{path.name} imports {banned}"


def test_out_of_credit_is_anthropics_400() -> None:
    """Anthropic answers an account out of credit with a 400 invalid_request_error (its
    message says the credit balance is too low), not a 402."""
    settings = SimulatorSettings.model_validate(
        {"config_models": False, "api_key": KEY, "account_errors": {"*": "insufficient_quota"}}
    )
    engine = Engine(settings)
    reply, body = send(engine, BODY)
    assert reply.status == 400
    kind, message = anthropic_error(body)
    assert kind == "invalid_request_error"
    assert message.startswith("Your credit balance is too low to access the Anthropic API.")


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
def test_simulator_accepts_native_params_anthropic_accepts(
    engine: Engine, extra: dict[str, Any]
) -> None:
    """Both are declared by the anthropic SDK 2.15's MessageCreateParams (top-level
    cache_control; SearchResultBlockParam in a user message), accepted by chatbatch's
    AnthropicParams and sent as given to a kind anthropic provider: the simulator must
    take them as Anthropic does, or local run errors every such line."""
    config = parse_config(anthropic_config())
    line = {"custom_id": "s", "params": {**BODY, "model": "haiku"} | extra}
    job = parse_job(line, config)
    reply, answer = send(engine, wire_body(job, config.models["haiku"], config.providers["claude"]))
    assert reply.status == 200, answer
    Message.model_validate(answer)


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
    engine: Engine, params: dict[str, Any], anthropic_says: str
) -> None:
    """Documented refusals of Anthropic's Messages API, answered with Anthropic's 400 (a
    simulator answering 200 would let local run and every test pass on a line Anthropic
    refuses)."""
    body = {"model": "claude-haiku-4-5", "max_tokens": 50} | params
    reply, answer = send(engine, body)
    assert reply.status == 400, f"Anthropic: 400 {anthropic_says!r}; simulator: {answer}"
    kind, message = anthropic_error(answer)
    assert kind == "invalid_request_error" and anthropic_says in message
    assert engine.stats().billed_calls == 0
