"""The simulator's thinking models: reasoning billed as output, inside the output cap,
reported inside ``completion_tokens`` or outside it (in ``total_tokens`` only)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chatbatch.core.pricing import Usage
from chatbatch.local.simulator import Engine, Reasoning, ReasoningUsage, SimulatorSettings


def ask(engine: Engine, max_tokens: int | None) -> tuple[dict[str, Any], str]:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "why?"}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    reply = engine.handle("POST", "/v1/chat/completions", {}, json.dumps(body).encode())
    assert reply.status == 200 and reply.on_delivered is not None
    reply.on_delivered()
    answer = json.loads(reply.body)
    return answer["usage"], answer["choices"][0]["message"]["content"]


@pytest.mark.parametrize("style", list(ReasoningUsage))
def test_reasoning_is_billed_as_output_and_reported_in_its_style(style: ReasoningUsage):
    think = {"m": Reasoning(tokens=30, usage=style)}
    engine = Engine(SimulatorSettings(models=["m"], config_models=False, reasoning=think))
    usage, _ = ask(engine, 100)
    visible = 24  # answer_tokens
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 30}
    inside = style is ReasoningUsage.inside
    assert usage["completion_tokens"] == (visible + 30 if inside else visible)
    assert usage["total_tokens"] == usage["prompt_tokens"] + visible + 30
    assert engine.stats().completion_tokens == visible + 30  # billed
    assert Usage.from_api(usage).completion_tokens == visible + 30  # and booked


def test_reasoning_comes_out_of_the_output_cap():
    think = {"m": Reasoning(tokens=30, usage=ReasoningUsage.outside)}
    engine = Engine(SimulatorSettings(models=["m"], config_models=False, reasoning=think))
    usage, content = ask(engine, 20)  # the cap is spent thinking: nothing visible
    assert (usage["completion_tokens"], content) == (0, "")
    assert usage["total_tokens"] - usage["prompt_tokens"] == 20
    usage, _ = ask(engine, 40)  # 30 thinking, 10 visible
    assert usage["completion_tokens"] == 10
    assert engine.stats().completion_tokens == 20 + 40


def test_a_model_that_does_not_think_reports_no_reasoning():
    engine = Engine(SimulatorSettings(models=["m"], config_models=False))
    usage, _ = ask(engine, None)
    assert "completion_tokens_details" not in usage
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
