"""What Anthropic's Messages API refuses and chatbatch can know before sending
(``translate.messages_rules``): an Anthropic-form line for a kind anthropic provider that
breaks a rule is refused at submit, naming the job and the field, and the simulator (its
own code, the adversary) refuses the same body."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chatbatch.core.config import Config, parse_config
from chatbatch.core.job_lines import parse_job
from chatbatch.core.jobs import JobError
from chatbatch.local.simulator import Engine, SimulatorSettings
from chatbatch.translate import check_job, native_body
from tests.unit.test_anthropic_config import anthropic_config

CONFIG: Config = parse_config(anthropic_config())
HEADERS = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 50,
    "messages": [{"role": "user", "content": "hi"}],
}
USER = {"role": "user", "content": "hi"}
TOOLS = [{"name": "f", "input_schema": {"type": "object"}}]
THINKING = {"type": "enabled", "budget_tokens": 1024}
EPHEMERAL = {"type": "ephemeral"}
TOOL_USE = {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f",
                                               "input": {}}]}  # fmt: skip

REFUSED = [
    pytest.param({"messages": [{"role": "user", "content": ""}]},
                 "params.messages[0].content", id="empty_user_content"),
    pytest.param({"messages": [USER, {"role": "assistant", "content": []}, USER]},
                 "params.messages[1].content", id="empty_assistant_between"),
    pytest.param({"messages": [{"role": "user", "content": [{"type": "text", "text": " \n"}]}]},
                 "params.messages[0].content[0].text", id="whitespace_only_text_block"),
    pytest.param({"messages": [{"role": "user", "content": "  "}]},
                 "params.messages[0].content", id="whitespace_only_string"),
    pytest.param({"system": [{"type": "text", "text": ""}], "messages": [USER]},
                 "params.system[0].text", id="empty_system_block"),
    pytest.param({"messages": [USER, {"role": "assistant", "content": "The answer is "}]},
                 "params.messages[1].content", id="prefill_trailing_whitespace"),
    pytest.param({"max_tokens": 2000, "thinking": THINKING, "temperature": 0.2,
                  "messages": [USER]}, "params.temperature", id="thinking_with_temperature"),
    pytest.param({"max_tokens": 2000, "thinking": THINKING, "tools": TOOLS,
                  "tool_choice": {"type": "any"}, "messages": [USER]},
                 "params.tool_choice", id="thinking_with_forced_tool"),
    pytest.param({"messages": [{"role": "user", "content": [
                     {"type": "text", "text": f"part {i}", "cache_control": EPHEMERAL}
                     for i in range(5)]}]}, "params.cache_control", id="five_cache_breakpoints"),
    pytest.param({"cache_control": EPHEMERAL, "messages": [{"role": "user", "content": [
                     {"type": "text", "text": f"part {i}", "cache_control": EPHEMERAL}
                     for i in range(4)]}]},
                 "params.cache_control", id="four_breakpoints_and_top_level"),
    pytest.param({"tools": TOOLS + TOOLS, "messages": [USER]},
                 "params.tools[1].name", id="duplicate_tool_names"),
    pytest.param({"tools": TOOLS, "messages": [
                     USER, TOOL_USE,
                     {"role": "user", "content": [
                         {"type": "text", "text": "here it is"},
                         {"type": "tool_result", "tool_use_id": "t1", "content": "r"}]}]},
                 "params.messages[2].content[1]", id="tool_result_after_text"),
]  # fmt: skip


def _simulate(body: dict[str, Any]) -> int:
    engine = Engine(SimulatorSettings(config_models=False))
    return engine.handle("POST", "/v1/messages", dict(HEADERS), json.dumps(body).encode()).status


@pytest.mark.parametrize(("params", "field"), REFUSED)
def test_a_native_line_anthropic_refuses_is_refused_at_submit(
    params: dict[str, Any], field: str
) -> None:
    line = {"custom_id": "r1", "params": {**BODY, "model": "haiku"} | params}
    job = parse_job(line, CONFIG)
    with pytest.raises(JobError) as caught:
        check_job(job, CONFIG)
    assert (caught.value.field, caught.value.custom_id) == (field, "r1"), caught.value
    assert "Anthropic" in str(caught.value)
    model = CONFIG.models["haiku"]
    assert _simulate(native_body(job.native_params or {}, model, 2000)) == 400


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"messages": [USER, {"role": "assistant", "content": ""}]},
                     id="empty_final_assistant"),
        pytest.param({"max_tokens": 2000, "thinking": THINKING, "temperature": 1,
                      "tool_choice": {"type": "auto"}, "tools": TOOLS, "messages": [USER]},
                     id="thinking_with_temperature_1_and_auto_tools"),
        pytest.param({"cache_control": EPHEMERAL, "messages": [{"role": "user", "content": [
                         {"type": "text", "text": f"part {i}", "cache_control": EPHEMERAL}
                         for i in range(3)]}]}, id="four_breakpoints"),
        pytest.param({"tools": TOOLS, "messages": [
                         USER, TOOL_USE,
                         {"role": "user", "content": [
                             {"type": "tool_result", "tool_use_id": "t1", "content": "r"},
                             {"type": "text", "text": "go on"}]}]}, id="tool_result_first"),
    ],
)  # fmt: skip
def test_a_native_line_anthropic_takes_is_accepted(params: dict[str, Any]) -> None:
    line = {"custom_id": "a1", "params": {**BODY, "model": "haiku"} | params}
    job = parse_job(line, CONFIG)
    check_job(job, CONFIG)
    model = CONFIG.models["haiku"]
    assert _simulate(native_body(job.native_params or {}, model, 2000)) == 200


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
