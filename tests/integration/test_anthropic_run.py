"""A file of Anthropic Message Batches lines run through ``local run`` on the (OpenAI-kind)
simulator: one results file, every line of it an ``anthropic.types.messages.
MessageBatchIndividualResponse``, each answer its own, the provider's 400 and the invalid
line reported as errored results, nothing lost."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from anthropic.types import Message
from anthropic.types.messages import MessageBatchIndividualResponse

from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime
from chatbatch.local.simulator import SimulatorSettings

MODEL = "gpt-4.1"  # configured with image_input_tokens
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJ"
    "RU5ErkJggg=="
)


def params(word: str, **extra: Any) -> dict[str, Any]:
    """Params whose last user text starts with ``word`` (the simulator echoes it)."""
    say = [{"role": "user", "content": f"{word} please answer"}]
    return {"model": MODEL, "max_tokens": 64, "messages": extra.pop("messages", say), **extra}


def anthropic_lines() -> list[dict[str, Any]]:
    weather = {
        "name": "weather",
        "description": "the weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    history = [
        {"role": "user", "content": "what is the weather in Paris"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "weather",
                    "input": {"city": "Paris"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny, 21 C"},
                {"type": "text", "text": "tooled and thanks"},
            ],
        },
    ]
    blocks = [
        {
            "role": "user",
            "content": [
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                },
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
                {
                    "type": "text",
                    "text": "imaged what is shown",
                    "cache_control": {"type": "ephemeral"},
                },
            ],
        }
    ]
    system = [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]
    return [
        {"custom_id": "plain", "params": params("plain")},
        {"custom_id": "system", "params": params("systemed", system="You are terse.")},
        {
            "custom_id": "blocks",
            "priority": "high",
            "params": params("x", system=system, messages=blocks),
        },
        {
            "custom_id": "tools",
            "params": params("t", messages=history, tools=[weather], tool_choice={"type": "auto"}),
        },
        {
            "custom_id": "stops",
            "params": params("stopped", stop_sequences=["END"], temperature=0.2),
        },
        {
            "custom_id": "streamed",
            # stream: false only (a Message Batches request never streams)
            "params": params("streamed", stream=False, metadata={"user_id": "u1"}),
        },
        {"custom_id": "refused", "params": params("refused")},
        {
            "custom_id": "no cap",
            "params": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        },
        {"custom_id": "after", "params": params("after")},
    ]


WORDS = {"plain": "plain", "system": "systemed", "blocks": "imaged", "tools": "tooled"}
WORDS |= {"stops": "stopped", "streamed": "streamed", "after": "after", "refused": "refused"}


def test_a_file_of_anthropic_lines_runs_and_reads_as_anthropic_results(tmp_path: Path) -> None:
    lines = anthropic_lines()
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    settings = SimulatorSettings(keep_bodies=True)
    with LocalRuntime(LocalOptions(timeout_s=120, simulator=settings)) as rt:
        assert rt.simulator is not None
        rt.simulator.inject("400")  # the first call is refused
        summary = rt.run(path, out)
        received = rt.simulator.stats().bodies
    assert (summary.succeeded, summary.failed, summary.invalid_lines) == (7, 2, 1), summary

    assert not (out / "errors.jsonl").exists(), "one results file, as Anthropic's"
    raw = [json.loads(t) for t in (out / "results.jsonl").read_text().splitlines()]
    results = [MessageBatchIndividualResponse.model_validate(line) for line in raw]
    assert [r.custom_id for r in results] == [line["custom_id"] for line in lines]
    by_id = {r.custom_id: (r, line) for r, line in zip(results, raw, strict=True)}

    invalid, invalid_raw = by_id.pop("no cap")
    assert invalid.result.type == "errored"
    error = invalid.result.error.error
    assert error.type == "invalid_request_error"
    assert "line 8" in error.message and "params.max_tokens" in error.message
    assert "add it" in error.message
    assert invalid_raw["chatbatch"]["code"] == "invalid_job"

    refused = [cid for cid, (r, _) in by_id.items() if r.result.type == "errored"]
    assert len(refused) == 1, refused
    r, line = by_id.pop(refused[0])
    assert r.result.type == "errored" and r.result.error.error.type == "invalid_request_error"
    assert line["chatbatch"]["code"] == "provider_400" and line["chatbatch"]["status_code"] == 400

    for custom_id, (r, line) in by_id.items():
        assert r.result.type == "succeeded", custom_id
        message = Message.model_validate(line["result"]["message"])
        text = message.content[0]
        assert text.type == "text" and WORDS[custom_id] in text.text, (custom_id, text)
        assert message.stop_reason == "end_turn" and message.usage.output_tokens > 0
        assert (
            isinstance(line["chatbatch"]["cost_usd"], str)
            and float(line["chatbatch"]["cost_usd"]) > 0
        )

    # the translated requests: the tool history as OpenAI's calls and results, stop, user
    tooled = next(b for b in received if any(m["role"] == "tool" for m in b["messages"]))
    assert [m["role"] for m in tooled["messages"]] == ["user", "assistant", "tool", "user"]
    call = tooled["messages"][1]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert tooled["messages"][2] == {
        "role": "tool",
        "tool_call_id": "toolu_1",
        "content": "sunny, 21 C",
    }
    assert any(b.get("stop") == ["END"] for b in received)
    assert any(not b.get("stream") and b.get("user") == "u1" for b in received)
