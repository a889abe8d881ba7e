"""OpenAI-form lines for a model whose provider is Anthropic's own API, end to end through
the local runtime: each goes out as a native ``/v1/messages`` request (the simulator,
validating like Anthropic, answers; what it received validates as the anthropic SDK's
``MessageCreateParams``), each result's body is a valid ``openai.types.chat.ChatCompletion``
carrying its own answer, and the ledger books exactly what the simulator billed, cache
writes and reads included."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from anthropic.types.message_create_params import (
    MessageCreateParamsNonStreaming,
    MessageCreateParamsStreaming,
)
from anthropic.types.messages import MessageBatchIndividualResponse
from openai.types.chat import ChatCompletion
from pydantic import TypeAdapter

from chatbatch.core.config import Model
from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime
from chatbatch.local.simulator import SimulatorSettings
from chatbatch.local.simulator.stats import Stats
from chatbatch.state.budget.budget import Budget
from chatbatch.translate.chat_to_messages import SAMPLING
from tests.unit.test_translate_anthropic import calling_weather

ROOT = Path(__file__).resolve().parents[2]
MODEL = "haiku"
CLAUDE = """
[providers.claude]
base_url = "https://api.anthropic.com/v1"
kind = "anthropic"
api_key_env = "ANTHROPIC_API_KEY"

[models.haiku]
provider = "claude"
model_id = "claude-haiku-4-5"
input_per_m = 1.00
cached_input_per_m = 0.10
cache_write_per_m = 1.25
cache_write_1h_per_m = 2.00
output_per_m = 5.00
prices_as_of = 2025-10-15
rpm = 1000
tpm = 1_000_000
max_output_tokens = 64000
default_max_tokens = 256
image_input_tokens = 1600
"""
PNG = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEA"
    "wS2OUAAAAABJRU5ErkJggg=="
)
CONTEXT = "Here is a long shared context that every question refers to. " * 40


def ask(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def cached_system() -> dict[str, Any]:
    part = {"type": "text", "text": CONTEXT, "prompt_cache_breakpoint": {"mode": "explicit"}}
    return {"role": "system", "content": [part]}


WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "today's weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
LINES: list[dict[str, Any]] = [
    {
        "custom_id": "text",
        "model": MODEL,
        "messages": [{"role": "system", "content": "be brief"}, ask("tag-text what is a haiku?")],
        "max_tokens": 60,
        "stop": ["END"],
    },
    {
        "custom_id": "parts",
        "model": MODEL,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "tag-parts describe"},
                    {"type": "image_url", "image_url": {"url": PNG}},
                    {"type": "text", "text": "this picture"},
                ],
            }
        ],
    },
    {
        "custom_id": "tools",
        "model": MODEL,
        "messages": [
            ask("weather in Oslo and Rome?"),
            calling_weather("Oslo", "Rome"),
            {"role": "tool", "tool_call_id": "c1", "content": "cold"},
            {"role": "tool", "tool_call_id": "c2", "content": "warm"},
            ask("tag-tools so which is warmer?"),
        ],
        "tools": [WEATHER],
        "tool_choice": "auto",
        "max_completion_tokens": 80,
    },
    {
        "custom_id": "stream",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": MODEL,
            "messages": [ask("tag-stream count to three")],
            "stream": True,
            "max_tokens": 40,
        },
    },
    {
        "custom_id": "cache-2",
        "model": MODEL,
        "messages": [cached_system(), ask("tag-cache2 second question")],
    },
]
FIRST = [
    {
        "custom_id": "cache-1",
        "model": MODEL,
        "messages": [cached_system(), ask("tag-cache1 first question")],
    }
]


def valid_anthropic_request(body: dict[str, Any]) -> None:
    """Valid per the SDK's request type; the sampling keys (``temperature``, ``top_p``,
    ``top_k``) aside: the SDK describes API version 2026-10-21, which dropped them, and
    chatbatch sends ``anthropic-version: 2023-06-01``, which takes them."""
    kind = MessageCreateParamsStreaming if body.get("stream") else MessageCreateParamsNonStreaming
    rest = {k: v for k, v in body.items() if k not in SAMPLING}
    TypeAdapter(kind).validate_python(rest)
    assert set(rest) <= kind.__required_keys__ | kind.__optional_keys__, body.keys()


def claude_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalOptions:
    """A local run whose config adds the Anthropic provider and model; the simulator
    keeps the bodies it received."""
    config_path = tmp_path / "chatbatch.toml"
    config_path.write_text((ROOT / "chatbatch.toml").read_text() + CLAUDE)
    monkeypatch.setenv("CHATBATCH_CONFIG", str(config_path))
    settings = SimulatorSettings(keep_bodies=True, rpm=10_000, tpm=10_000_000)
    return LocalOptions(timeout_s=120, simulator=settings, config_path=config_path)


def billed_usd(stats: Stats, model: Model) -> Decimal:
    """What the simulator billed the model, at its input, cache-read, cache-write (5-minute
    and 1-hour) and output prices."""
    bill = stats.billed_by_model[model.model_id]
    plain = bill.prompt_tokens - bill.cached_tokens - bill.cache_write_tokens
    five_minutes = bill.cache_write_tokens - bill.cache_write_1h_tokens
    return (
        plain * model.input_per_m
        + bill.cached_tokens * model.cached_input_per_m
        + five_minutes * model.cache_write_per_m  # type: ignore[operator]
        + bill.cache_write_1h_tokens * model.cache_write_1h_per_m  # type: ignore[operator]
        + bill.completion_tokens * model.output_per_m
    ) / 1_000_000


def run_batch(rt: LocalRuntime, lines: list[dict[str, Any]], batch_id: str, out: Path) -> Any:
    path = out.with_suffix(".jsonl")
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    started = time.monotonic()
    plan = rt.submit(path, batch_id)
    info = rt.wait(plan)
    return rt.write_outputs(path, plan, info, out, time.monotonic() - started)


def test_openai_lines_run_natively_on_anthropic_and_book_what_was_billed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with LocalRuntime(claude_options(tmp_path, monkeypatch)) as rt:
        first = run_batch(rt, FIRST, "first", tmp_path / "first")
        second = run_batch(rt, LINES, "second", tmp_path / "second")
        assert rt.simulator is not None
        stats = rt.simulator.stats()
        spent = Budget(boto3.client("dynamodb"), rt.resources.table, rt.config).usage()
        model = rt.config.models[MODEL]
    assert (first.succeeded, second.succeeded) == (1, len(LINES)), (first, second)
    assert second.failed == 0 and second.invalid_lines == 0
    # every request the simulator saw was a valid Anthropic Messages request
    assert len(stats.bodies) == 1 + len(LINES) == stats.requests
    for body in stats.bodies:
        valid_anthropic_request(body)
    assert all(b["model"] == "claude-haiku-4-5" and "max_tokens" in b for b in stats.bodies)
    # every result is a valid chat.completion carrying its own answer
    results = [
        json.loads(line)
        for out in ("first", "second")
        for line in (tmp_path / out / "results.jsonl").read_text().splitlines()
    ]
    assert {r["custom_id"] for r in results} == {"cache-1", *(line["custom_id"] for line in LINES)}
    for result in results:
        completion = ChatCompletion.model_validate(result["response"]["body"])
        tag = "tag-" + result["custom_id"].replace("-", "")
        assert tag in (completion.choices[0].message.content or ""), result["custom_id"]
        assert result["response"]["request_id"].startswith("req_")
    # the cache: written by the first batch's job, read by the second's
    assert stats.cache_write_tokens > 0 and stats.cached_tokens > 0
    billed = billed_usd(stats, model)
    assert billed > 0
    costs = [
        json.loads(line)
        for out in ("first", "second")
        for line in (tmp_path / out / "costs.jsonl").read_text().splitlines()
    ]
    assert sum(c["cache_write_tokens"] for c in costs) == stats.cache_write_tokens
    assert sum(c["cached_tokens"] for c in costs) == stats.cached_tokens
    assert sum(Decimal(c["cost_usd"]) for c in costs) == billed
    assert spent.reserved_usd == 0
    assert spent.spent_usd == billed
    assert Decimal(0) < spent.spent_usd


def test_every_anthropic_call_that_may_have_been_billed_is_booked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Message cut, a stream cut before message_stop, an error event mid-stream and a
    Message without usage: each is booked at the job's worst case (the first three on
    their own records, re-sent after), so the books are never below the bill."""
    config_path = tmp_path / "chatbatch.toml"
    config_path.write_text((ROOT / "chatbatch.toml").read_text() + CLAUDE)
    monkeypatch.setenv("CHATBATCH_CONFIG", str(config_path))
    jobs = [
        {"custom_id": f"j{i}", "model": MODEL, "prompt": f"tag-j{i} question", "max_tokens": 30}
        | ({"stream": True} if i % 2 else {})
        for i in range(5)
    ]
    options = LocalOptions(timeout_s=120, simulator=SimulatorSettings(), config_path=config_path)
    with LocalRuntime(options) as rt:
        assert rt.simulator is not None
        rt.simulator.inject("truncate", "corrupt", "truncate", "no_usage")
        summary = run_batch(rt, jobs, "faults", tmp_path / "faults")
        stats = rt.simulator.stats()
        spent = Budget(boto3.client("dynamodb"), rt.resources.table, rt.config).usage()
        model = rt.config.models[MODEL]
    assert summary.succeeded == len(jobs) and summary.failed == 0, summary
    assert stats.billed_unread == 3
    assert stats.requests == len(jobs) + 3  # one re-send per answer never read, no more
    costs = [json.loads(c) for c in (tmp_path / "faults" / "costs.jsonl").read_text().splitlines()]
    assert len([c for c in costs if c["usage_estimated"]]) == 4
    bill = stats.billed_by_model["claude-haiku-4-5"]
    billed = (
        bill.prompt_tokens * model.input_per_m + bill.completion_tokens * model.output_per_m
    ) / 1_000_000
    assert spent.reserved_usd == 0
    assert spent.spent_usd == sum(Decimal(c["cost_usd"]) for c in costs) > billed


HOUR = {"type": "ephemeral", "ttl": "1h"}
CACHED_SYSTEM = [{"type": "text", "text": CONTEXT, "cache_control": {"type": "ephemeral"}}]
NATIVE: list[dict[str, Any]] = [
    {
        "custom_id": "plain",
        "params": {
            "model": MODEL,
            "max_tokens": 64,
            "system": CACHED_SYSTEM,
            "messages": [{"role": "user", "content": "tag-plain what is a haiku?"}],
            "stop_sequences": ["END"],
            "metadata": {"user_id": "u-1"},
        },
    },
    {  # what an OpenAI-kind provider could not honour, sent as given to Anthropic's API
        "custom_id": "native",
        "priority": "high",
        "params": {
            "model": MODEL,
            "max_tokens": 2048,
            "system": CACHED_SYSTEM,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "weather in Oslo?"},
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": "image/png",
                                "data": PNG.split(",", 1)[1],
                            },
                        },
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "weather",
                            "input": {"city": "Oslo"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "cold"},
                        {"type": "text", "text": "tag-native so, a coat?"},
                    ],
                },
            ],
            "tools": [
                {
                    "name": "weather",
                    "description": "today's weather in a city",
                    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
                }
            ],
            "tool_choice": {"type": "auto"},
        },
    },
    {
        "custom_id": "sampled",
        "params": {
            "model": MODEL,
            "max_tokens": 32,
            "top_k": 5,
            "messages": [
                {"role": "user", "content": "tag-sampled name a colour"},
                {"role": "assistant", "content": "The colour is"},  # a prefill, continued
            ],
        },
    },
    {  # written to the 1-hour cache: booked at cache_write_1h_per_m, as billed
        "custom_id": "hour",
        "params": {
            "model": MODEL,
            "max_tokens": 32,
            "system": [
                {
                    "type": "text",
                    "text": "An hour-long policy. " * 60,
                    "cache_control": {"type": "ephemeral", "ttl": "1h"},
                }
            ],
            "messages": [ask("tag-hour what does the policy say?")],
        },
    },
    {"custom_id": "no-cap", "params": {"model": MODEL, "messages": [ask("no max_tokens")]}},
]


def test_anthropic_lines_go_to_anthropic_as_given_and_come_back_as_its_batch_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Message Batches lines for a model served by Anthropic's own API: each request the
    simulator received is the line's params as given (only the model id configured), each
    result line is an Anthropic batch result carrying its own Message, the invalid line is
    an errored result naming its field, and the ledger books what the simulator billed."""
    with LocalRuntime(claude_options(tmp_path, monkeypatch)) as rt:
        summary = run_batch(rt, NATIVE, "native", tmp_path / "native")
        assert rt.simulator is not None
        stats = rt.simulator.stats()
        spent = Budget(boto3.client("dynamodb"), rt.resources.table, rt.config).usage()
        model = rt.config.models[MODEL]
    valid = [line for line in NATIVE if "max_tokens" in line["params"]]
    assert (summary.succeeded, summary.invalid_lines) == (len(valid), 1), summary
    sent = sorted(stats.bodies, key=lambda body: json.dumps(body["messages"]))
    given = sorted(
        ({**line["params"], "model": "claude-haiku-4-5"} for line in valid),
        key=lambda params: json.dumps(params["messages"]),
    )
    assert sent == given  # nothing added, dropped or altered
    for body in sent:
        valid_anthropic_request(body)
    out = tmp_path / "native"
    assert not (out / "errors.jsonl").exists() or not (out / "errors.jsonl").read_text()
    lines = [json.loads(text) for text in (out / "results.jsonl").read_text().splitlines()]
    results = {line["custom_id"]: line for line in lines}
    assert set(results) == {line["custom_id"] for line in NATIVE}
    for custom_id, line in results.items():
        result = MessageBatchIndividualResponse.model_validate(line).result
        if custom_id == "no-cap":
            assert result.type == "errored"
            assert "params.max_tokens" in result.error.error.message
            continue
        assert result.type == "succeeded", line
        text = "".join(b.text for b in result.message.content if b.type == "text")
        assert f"tag-{custom_id}" in text, (custom_id, text)
    assert stats.cache_write_tokens > 0  # the system's cache_control went as given
    assert stats.cache_write_1h_tokens > 0  # and the 1-hour one, recorded as such
    costs = [json.loads(text) for text in (out / "costs.jsonl").read_text().splitlines()]
    assert sum(c["cache_write_1h_tokens"] for c in costs) == stats.cache_write_1h_tokens
    billed = billed_usd(stats, model)
    assert spent.reserved_usd == 0 and spent.spent_usd == billed > 0


def test_native_message_without_usage_is_a_valid_batch_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An Anthropic-form batch on Anthropic's own API whose answer came without usage: it
    is booked at its worst case, and its results line must still be an SDK batch result
    (Message.usage is required; an OpenAI-form job's translated Message carries the usage
    booked, the native Message is written as it came, without any)."""
    config_path = tmp_path / "chatbatch.toml"
    config_path.write_text((ROOT / "chatbatch.toml").read_text() + CLAUDE)
    monkeypatch.setenv("CHATBATCH_CONFIG", str(config_path))
    lines = [
        {
            "custom_id": f"n{i}",
            "params": {
                "model": MODEL,
                "max_tokens": 30,
                "messages": [{"role": "user", "content": f"tag-n{i} question"}],
            },
        }
        for i in range(2)
    ]
    options = LocalOptions(timeout_s=120, simulator=SimulatorSettings(), config_path=config_path)
    with LocalRuntime(options) as rt:
        assert rt.simulator is not None
        rt.simulator.inject("no_usage")
        summary = run_batch(rt, lines, "nousage", tmp_path / "nousage")
        spent = Budget(boto3.client("dynamodb"), rt.resources.table, rt.config).usage()
    assert summary.succeeded == 2, summary
    assert spent.reserved_usd == 0
    out = (tmp_path / "nousage" / "results.jsonl").read_text().splitlines()
    assert len(out) == 2
    for text in out:
        line = json.loads(text)
        result = MessageBatchIndividualResponse.model_validate(line).result
        assert result.type == "succeeded"
