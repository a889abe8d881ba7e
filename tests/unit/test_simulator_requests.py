"""The simulator validates chat requests like OpenAI: it accepts what the real API accepts
(content parts, tool histories, every SDK-built body), refuses what it refuses (with
OpenAI's error shape), refuses max_tokens for a model chatbatch.toml marks
``reasoning = true``, and bills every one of ``n`` choices."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from chatbatch.local.simulator import Engine, SimulatorSettings
from tests.unit.sdk_bodies import bodies


def chat(engine: Engine, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    reply = engine.handle("POST", "/v1/chat/completions", {}, json.dumps(body).encode())
    return reply.status, json.loads(reply.body)


@pytest.fixture
def engine() -> Engine:
    return Engine(SimulatorSettings(config_models=False, keep_bodies=True))


@pytest.mark.parametrize(("custom_id", "body"), bodies("gpt-4.1").items(), ids=str)
def test_every_sdk_built_body_is_accepted_and_kept_as_received(
    engine: Engine, custom_id: str, body: dict[str, Any]
):
    status, answer = chat(engine, body)
    assert status == 200, answer
    assert engine.stats().bodies == [body]


def test_n_choices_are_answered_and_each_ones_output_billed(engine: Engine):
    one = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9}
    _, single = chat(engine, one)
    _, three = chat(engine, one | {"n": 3})
    assert len(three["choices"]) == 3
    per_choice = single["usage"]["completion_tokens"]
    assert three["usage"]["completion_tokens"] == 3 * per_choice
    assert three["usage"]["prompt_tokens"] == single["usage"]["prompt_tokens"]


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
REFUSED = [
    # (messages, param, code)
    ([user([{"type": "video", "url": "x"}])], "messages[0].content[0].type", "invalid_value"),
    (
        [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}],
        "messages[0].content[0].type",
        "invalid_value",
    ),
    ([user([{"type": "text"}])], "messages[0].content[0].text", "missing_required_parameter"),
    (
        [user([{"type": "image_url", "image_url": {}}])],
        "messages[0].content[0].image_url.url",
        "missing_required_parameter",
    ),
    ([user("q"), {"role": "tool", "content": "42"}], "messages[1].tool_call_id", None),
    ([user("q"), {"role": "tool", "tool_call_id": "c9", "content": "4"}], "messages[1].role", None),
    ([user("q"), {"role": "assistant", "content": None}], "messages[1].content", "invalid_type"),
    (
        [user("q"), {"role": "assistant", "content": None, "tool_calls": []}],
        "messages[1].tool_calls",
        "empty_array",
    ),
]


@pytest.mark.parametrize(("messages", "param", "code"), REFUSED)
def test_what_openai_refuses_is_refused_with_its_error_shape(
    engine: Engine, messages: list[dict[str, Any]], param: str, code: str | None
):
    status, answer = chat(engine, {"model": "m", "messages": messages})
    assert status == 400
    error = answer["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    if code is not None:
        assert error["code"] == code


def test_a_tool_history_is_accepted(engine: Engine):
    messages = [
        user("q"),
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "4"}]},
    ]
    assert chat(engine, {"model": "m", "messages": messages})[0] == 200


def test_a_model_marked_reasoning_in_the_config_refuses_max_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    toml = Path(__file__).resolve().parents[2] / "chatbatch.toml"
    text = toml.read_text().replace('[models."gpt-4.1"]', '[models."gpt-4.1"]\nreasoning = true', 1)
    (tmp_path / "chatbatch.toml").write_text(text)
    monkeypatch.setenv("CHATBATCH_CONFIG", str(tmp_path / "chatbatch.toml"))
    engine = Engine(SimulatorSettings(completion_tokens_only=[]))
    messages = [user("hi")]
    status, answer = chat(engine, {"model": "gpt-4.1", "messages": messages, "max_tokens": 5})
    assert status == 400
    assert answer["error"]["message"].startswith("Unsupported parameter: 'max_tokens'")
    assert answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["param"] == "max_tokens"
    assert answer["error"]["code"] == "unsupported_parameter"
    fine = {"model": "gpt-4.1", "messages": messages, "max_completion_tokens": 5}
    assert chat(engine, fine)[0] == 200
    # a model the config does not mark takes max_tokens
    assert chat(engine, {"model": "deepseek-chat", "messages": messages, "max_tokens": 5})[0] == 200
