"""Properties of jobs on an Anthropic model (OpenAI-form, and Anthropic-form lines marking
a block ttl "1h"): every translated request is one
the anthropic SDK and the simulator accept, and the worst case reserved bounds every bill:
whatever the simulator bills for a job (its prompt written to the cache, read from it, or
plain), the cost at the model's prices is at most ``Job.worst_case_usd``."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from chatbatch.core.config import Config, parse_config
from chatbatch.core.job_lines import parse_job
from chatbatch.core.pricing import Usage, cost
from chatbatch.local.simulator import Engine, SimulatorSettings
from chatbatch.translate import wire_body
from tests.unit.test_anthropic_config import anthropic_config
from tests.unit.test_translate_anthropic import valid_request

CONFIG: Config = parse_config(anthropic_config())
HEADERS = {"x-api-key": "k", "anthropic-version": "2023-06-01"}

text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=200)
words = text.filter(lambda t: t.strip() != "")


@st.composite
def lines(draw: st.DrawFn) -> dict[str, Any]:
    system: list[dict[str, Any]] = []
    if draw(st.booleans()):
        part: dict[str, Any] = {"type": "text", "text": draw(words)}
        if draw(st.booleans()):
            part["prompt_cache_breakpoint"] = {"mode": "explicit"}
        system = [{"role": "system", "content": [part]}]
    turns = [{"role": "user", "content": draw(words)}]
    for _ in range(draw(st.integers(0, 3))):
        turns += [
            {"role": "assistant", "content": draw(words)},
            {"role": "user", "content": draw(words)},
        ]
    line: dict[str, Any] = {
        "custom_id": "p",
        "model": "haiku",
        "messages": system + turns,
        "max_tokens": draw(st.integers(1, 300)),
        "stream": draw(st.booleans()),
    }
    if draw(st.booleans()):
        line["tools"] = [
            {"type": "function", "function": {"name": "f", "description": draw(words)}}
        ]
    return line


@settings(max_examples=60, deadline=None)
@given(lines(), st.integers(4, 400))
def test_no_bill_exceeds_the_worst_case(line: dict[str, Any], answer_tokens: int) -> None:
    job = parse_job(line, CONFIG)
    model = CONFIG.models["haiku"]
    body = wire_body(job, model, CONFIG.providers["claude"]) | {"stream": False}
    worst = job.worst_case_usd(model)
    engine = Engine(SimulatorSettings(config_models=False, answer_tokens=answer_tokens))
    for _ in range(2):  # the first call writes the marked prefix, the second reads it
        reply = engine.handle("POST", "/v1/messages", dict(HEADERS), json.dumps(body).encode())
        assert reply.status == 200, reply.body
        usage = Usage.from_anthropic(json.loads(reply.body)["usage"])
        assert cost(usage, model) <= worst, (usage, worst)


@settings(max_examples=60, deadline=None)
@given(lines(), st.floats(0, 1), st.floats(0, 1))
def test_any_split_of_the_prompt_bound_is_within_the_worst_case(
    line: dict[str, Any], written_share: float, read_share: float
) -> None:
    """However the provider splits the prompt bound between plain input, cache writes (at
    1.25x input) and cache reads, the bill stays within the worst case reserved."""
    job = parse_job(line, CONFIG)
    model = CONFIG.models["haiku"]
    worst = job.worst_case_usage(model)
    written = int(worst.prompt_tokens * written_share)
    read = int((worst.prompt_tokens - written) * read_share)
    usage = Usage(
        prompt_tokens=worst.prompt_tokens,
        cache_write_tokens=written,
        cached_tokens=read,
        completion_tokens=job.output_bound(model),
    )
    assert cost(usage, model) <= job.worst_case_usd(model)


@settings(max_examples=60, deadline=None)
@given(lines())
def test_every_translated_request_is_one_the_sdk_and_the_simulator_accept(
    line: dict[str, Any],
) -> None:
    job = parse_job(line, CONFIG)
    body = wire_body(job, CONFIG.models["haiku"], CONFIG.providers["claude"])
    valid_request(body)
    engine = Engine(SimulatorSettings(config_models=False))
    reply = engine.handle("POST", "/v1/messages", dict(HEADERS), json.dumps(body).encode())
    assert reply.status == 200, reply.body


@settings(max_examples=60, deadline=None)
@given(words, st.integers(1, 300), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1))
def test_any_split_of_a_one_hour_lines_bound_is_within_the_worst_case(
    system: str, max_tokens: int, written_share: float, hour_share: float, read_share: float
) -> None:
    """An Anthropic-form line marking a block ttl "1h": however the prompt bound splits
    between plain input, 5-minute writes (1.25x), 1-hour writes (2x) and reads, up to the
    whole bound written for an hour, the bill stays within the worst case reserved."""
    block = {"type": "text", "text": system, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    params = {"model": "haiku", "max_tokens": max_tokens, "system": [block],
              "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    job = parse_job({"custom_id": "h", "params": params}, CONFIG)
    model = CONFIG.models["haiku"]
    worst = job.worst_case_usage(model)
    written = int(worst.prompt_tokens * written_share)
    read = int((worst.prompt_tokens - written) * read_share)
    for hour in (int(written * hour_share), written):
        usage = Usage(
            prompt_tokens=worst.prompt_tokens,
            cache_write_tokens=written,
            cache_write_1h_tokens=hour,
            cached_tokens=read,
            completion_tokens=job.output_bound(model),
        )
        assert cost(usage, model) <= job.worst_case_usd(model)


def test_one_hour_cache_write_worst_case_bounds_the_whole_prompt_written_for_an_hour() -> None:
    """The reservation prices the prompt bound at cache_write_per_m (1.25x); a line whose
    prompt is all written to the 1-hour cache is billed at 2x input per token."""
    line = {
        "custom_id": "c1",
        "params": {
            "model": "haiku",
            "max_tokens": 1,
            "system": [{"type": "text", "text": "x" * 4000,
                        "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
            "messages": [{"role": "user", "content": "hi"}],
        },
    }  # fmt: skip
    job = parse_job(line, CONFIG)
    model = CONFIG.models["haiku"]
    bound = job.worst_case_usage(model).prompt_tokens
    # the same split the project's own property allows: the whole prompt bound written
    all_written_1h = bound * 2 * model.input_per_m / 1_000_000 + model.output_per_m / 1_000_000
    assert all_written_1h <= job.worst_case_usd(model)
