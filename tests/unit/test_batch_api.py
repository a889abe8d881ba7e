"""The providers' batch clients (``chatbatch.provider.batch_api``) against the simulator on
127.0.0.1, its clock the test's: each job's line is its synchronous request body, each
answer is what the synchronous path stores for the same body, usage adds up to what the
simulator billed as batch work, and expired, cancelled and refused lines come back as
what the scheduled function must do with them (retry synchronously, or fail for good)."""

from __future__ import annotations

import asyncio
import copy
import json
import tomllib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_anthropic_config import anthropic_config
from test_simulator_batches import TURNAROUND_S, Clock, batch_simulator

from chatbatch.core.config import Config, parse_config
from chatbatch.core.job_lines import parse_line
from chatbatch.core.jobs import BATCH_ID_PATTERN, Job
from chatbatch.core.pricing import Usage
from chatbatch.local.simulator import Simulator
from chatbatch.provider.batch_api import (
    LIMITS,
    AnthropicBatchClient,
    BatchApi,
    BatchPart,
    CustomIds,
    JobOutcome,
    Limits,
    MalformedResult,
    OpenAIBatchClient,
    TooLarge,
    provider_custom_id,
)
from chatbatch.provider.batch_api import custom_ids as ids_module
from chatbatch.provider.batch_api.openai import line_outcome
from chatbatch.provider.batch_api.results import ResultLines
from chatbatch.provider.client import ProviderClient
from chatbatch.translate import checked, result_body, wire_body
from chatbatch.worker.batch_jobs import batch_parts, stored

ROOT = Path(__file__).resolve().parents[2]
RAW = tomllib.loads((ROOT / "chatbatch.toml").read_text())
KEY = "sk-sim-batch-route"
GPT, HAIKU = "gpt-4.1", "claude-haiku-4-5"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sim(clock: Clock) -> Iterator[Simulator]:
    settings = {"batch_finalize_s": 1.0, "batch_cancel_s": 2.0, "latency_ms": 0}
    with batch_simulator(clock, KEY, [GPT, HAIKU], **settings) as running:
        yield running


def sim_config(base_url: str) -> Config:
    """The shipped config, its OpenAI provider and a kind anthropic one (Claude Haiku with
    its batch prices) at the simulator."""
    data = anthropic_config(
        rpm=10_000,
        tpm=10_000_000,
        default_max_tokens=200,
        batch_api="anthropic",
        batch_input_per_m=0.50,
        batch_cached_input_per_m=0.05,
        batch_output_per_m=2.50,
    )
    data["providers"]["openai"]["base_url"] = base_url
    data["providers"]["claude"]["base_url"] = base_url
    data["providers"]["claude"]["api_key_env"] = "OPENAI_API_KEY"  # same URL: may share
    data["models"][GPT] |= {"default_max_tokens": 200}
    return parse_config(data)


@pytest.fixture
def config(sim: Simulator) -> Config:
    return sim_config(sim.base_url)


def jobs_of(config: Config, lines: list[dict[str, Any]], batch_id: str = "b-1") -> list[Job]:
    jobs = []
    for number, line in enumerate(lines, start=1):
        job = checked(parse_line(json.dumps(line), config, line=number), config, number)
        assert isinstance(job, Job), job
        jobs.append(job.model_copy(update={"batch_id": batch_id}))
    return jobs


TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
SCHEMA = {
    "type": "json_schema",
    "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
}
PARTS = [{"type": "text", "text": "first part"}, {"type": "text", "text": "second part"}]


def openai_lines() -> list[dict[str, Any]]:
    return [
        {"custom_id": "no cap", "model": GPT, "prompt": "answer at length"},
        {"custom_id": "two", "model": GPT, "prompt": "two answers", "n": 2, "max_tokens": 20},
        {"custom_id": "tools", "model": GPT, "prompt": "weather in Paris?", "tools": [TOOL]},
        {"custom_id": "schema", "model": GPT, "prompt": "as json", "response_format": SCHEMA},
        {"custom_id": "parts", "model": GPT, "messages": [{"role": "user", "content": PARTS}]},
        {
            "custom_id": "batch form",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": GPT, "messages": [{"role": "user", "content": "hi"}]},
        },
    ]


def anthropic_lines() -> list[dict[str, Any]]:
    return [
        {"custom_id": "no cap", "model": "haiku", "prompt": "answer at length"},
        {"custom_id": "tools", "model": "haiku", "prompt": "weather in Paris?", "tools": [TOOL]},
        {
            "custom_id": "system and parts",
            "model": "haiku",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": PARTS},
            ],
            "max_tokens": 30,
        },
    ]


def native_lines() -> list[dict[str, Any]]:
    params = {"model": HAIKU, "max_tokens": 25, "system": "terse"}
    return [
        {
            "custom_id": "native",
            "params": params | {"messages": [{"role": "user", "content": "x"}]},
        },
    ]


def client_for(part: BatchPart, config: Config) -> BatchApi:
    kind = OpenAIBatchClient if part.api == "openai" else AnthropicBatchClient
    return kind(config, part.provider, lambda _: KEY)


def synchronous(config: Config, jobs: list[Job]) -> dict[str, dict[str, Any]]:
    """Each job's stored answer on the synchronous path: the worker's request body through
    the provider client, its answer as the worker keeps it (``result_body``)."""
    client = ProviderClient(config, lambda _: KEY)

    async def run() -> dict[str, dict[str, Any]]:
        answers = {}
        for job in jobs:
            model = config.models[job.model]
            provider = config.providers[model.provider]
            completion = await client.complete(job.model, wire_body(job, model, provider))
            answers[job.custom_id] = result_body(job, completion.body, provider, 0)
        await client.aclose()
        return answers

    return asyncio.run(run())


def comparable(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("id", "created")}


def admin(sim: Simulator, batch_id: str, action: str) -> None:
    """The simulator's ``POST /admin/batches/{id}/expire`` or ``.../fail``."""
    headers = {"authorization": f"Bearer {KEY}"}
    forced = httpx.post(f"{sim.url}/admin/batches/{batch_id}/{action}", headers=headers)
    assert forced.status_code == 200, forced.text


def run_to_end(client: BatchApi, batch_id: str, clock: Clock) -> None:
    clock.advance(TURNAROUND_S + 5)
    assert client.poll(batch_id).ended


def answered(part: BatchPart, config: Config, clock: Clock) -> list[JobOutcome]:
    """``part`` created at the simulator, run to its end, and its results."""
    client = client_for(part, config)
    batch = client.create(part)
    run_to_end(client, batch.id, clock)
    return client.results(batch.id, part)


@pytest.mark.parametrize(
    "lines", [openai_lines, anthropic_lines, native_lines], ids=["openai", "anthropic", "native"]
)
def test_each_answer_is_the_synchronous_one_and_usage_adds_up_to_the_bill(
    sim: Simulator, config: Config, clock: Clock, lines: Any
) -> None:
    jobs = jobs_of(config, lines())
    expected = synchronous(config, jobs)
    sim.reset()  # the same prompt-cache state for the batch, and nothing billed yet
    [part] = batch_parts(jobs, config)
    assert [r.job for r in part.requests] == jobs
    for request in part.requests:  # each line carries the synchronous request body
        model = config.models[request.job.model]
        body = wire_body(request.job, model, config.providers[model.provider])
        assert request.line.get("body", request.line.get("params")) == body
    client = client_for(part, config)
    created = client.create(part)
    assert not created.ended
    run_to_end(client, created.id, clock)
    answers = client.results(created.id, part)
    if part.api == "anthropic":  # the provider's answer is a Message, as the chat client's
        assert all(o.body is not None and o.body["type"] == "message" for o in answers)
    outcomes = [stored(o, part, config) for o in answers]
    assert sorted(o.custom_id for o in outcomes) == sorted(j.custom_id for j in jobs)
    for outcome in outcomes:
        assert outcome.kind == "succeeded" and outcome.batch_id == "b-1", outcome
        assert outcome.body is not None
        assert comparable(outcome.body) == comparable(expected[outcome.custom_id])
    bill = sim.stats().batch_billed_by_model[jobs[0].model if part.api == "openai" else HAIKU]
    usages = [o.usage for o in outcomes if o.usage is not None]
    assert len(usages) == len(jobs) == bill.calls
    assert sum(u.prompt_tokens for u in usages) == bill.prompt_tokens
    assert sum(u.completion_tokens for u in usages) == bill.completion_tokens
    assert sum(u.cached_tokens for u in usages) == bill.cached_tokens
    assert sim.stats().billed_calls == 0  # nothing went through the synchronous endpoint


def many(config: Config, model: str, n: int, batch_id: str = "b-1") -> list[Job]:
    lines = [{"custom_id": f"q{i}", "model": model, "prompt": f"q {i}"} for i in range(n)]
    return jobs_of(config, lines, batch_id)


@pytest.mark.parametrize("model", ["gpt-4.1", "haiku"])
def test_a_batch_expired_part_way_sends_the_rest_back(
    sim: Simulator, config: Config, clock: Clock, model: str
) -> None:
    [part] = batch_parts(many(config, model, 10), config)
    client = client_for(part, config)
    batch = client.create(part)
    clock.advance(TURNAROUND_S * 0.45)  # 4 of 10 lines due
    client.poll(batch.id)
    admin(sim, batch.id, "expire")
    assert client.poll(batch.id).ended
    outcomes = client.results(batch.id, part)
    kinds = [o.kind for o in sorted(outcomes, key=lambda o: int(o.custom_id[1:]))]
    assert kinds == ["succeeded"] * 4 + ["retry_sync"] * 6
    assert all("expired" in o.message for o in outcomes if o.kind == "retry_sync")
    bill = sim.stats().batch_billed_by_model[config.models[model].model_id]
    assert bill.calls == 4  # the expired lines were never billed


@pytest.mark.parametrize("model", ["gpt-4.1", "haiku"])
def test_cancel_mid_batch(sim: Simulator, config: Config, clock: Clock, model: str) -> None:
    [part] = batch_parts(many(config, model, 10), config)
    client = client_for(part, config)
    batch = client.create(part)
    clock.advance(TURNAROUND_S * 0.35)
    cancelling = client.cancel(batch.id)
    assert not cancelling.ended and cancelling.status in ("cancelling", "canceling")
    clock.advance(3)
    assert client.poll(batch.id).ended
    outcomes = client.results(batch.id, part)
    succeeded = [o for o in outcomes if o.kind == "succeeded"]
    assert len(succeeded) == 3 and len(outcomes) == 10
    assert {o.kind for o in outcomes} == {"succeeded", "retry_sync"}
    assert all("cancel" in o.message for o in outcomes if o.kind == "retry_sync")


def test_a_line_the_api_refuses_fails_for_good_with_its_message(
    sim: Simulator, config: Config, clock: Clock
) -> None:
    lines = [
        {"custom_id": "fine", "model": GPT, "prompt": "fine"},
        {
            "custom_id": "orphan tool result",
            "model": GPT,
            "messages": [
                {"role": "user", "content": "x"},
                {"role": "tool", "tool_call_id": "call_nowhere", "content": "18 C"},
            ],
        },
    ]
    jobs = jobs_of(config, lines)
    [part] = batch_parts(jobs, config)
    outcomes = {o.custom_id: o for o in answered(part, config, clock)}
    refused = outcomes["orphan tool result"]
    assert refused.kind == "failed" and refused.status == 400
    assert "tool" in refused.message and refused.error is not None
    assert refused.error["error"]["message"] == refused.message
    assert outcomes["fine"].kind == "succeeded"


def test_an_anthropic_line_the_api_refuses_fails_for_good(
    sim: Simulator, config: Config, clock: Clock
) -> None:
    """Anthropic validates each request's params when it runs: a body it refuses is an
    ``errored`` result (chatbatch checks lines at submit, so the line here is broken after
    the split, as a provider whose rules changed would see it)."""
    [part] = batch_parts(many(config, "haiku", 2), config)
    broken = part.requests[0]
    params = broken.line["params"] | {"messages": []}
    part.requests[0] = replace(broken, line=broken.line | {"params": params})
    outcomes = {o.custom_id: o for o in answered(part, config, clock)}
    refused = outcomes["q0"]
    assert refused.kind == "failed" and refused.status == 400
    assert refused.error is not None and refused.error["type"] == "error"
    assert refused.message == refused.error["error"]["message"] and "messages" in refused.message
    assert outcomes["q1"].kind == "succeeded"


def test_a_failed_batch_sends_every_unanswered_job_back(
    sim: Simulator, config: Config, clock: Clock
) -> None:
    [part] = batch_parts(many(config, GPT, 4), config)
    client = client_for(part, config)
    batch = client.create(part)
    clock.advance(TURNAROUND_S * 0.55)
    client.poll(batch.id)
    admin(sim, batch.id, "fail")
    outcomes = client.results(batch.id, part)
    assert sorted(o.kind for o in outcomes) == ["retry_sync"] * 2 + ["succeeded"] * 2
    assert all("no result: the batch ended failed" in o.message for o in outcomes[2:])


def test_results_before_the_end_are_refused(sim: Simulator, config: Config) -> None:
    [part] = batch_parts(many(config, GPT, 2), config)
    client = client_for(part, config)
    batch = client.create(part)
    with pytest.raises(Exception, match="its results are not ready"):
        client.results(batch.id, part)


def test_split_at_the_limits(
    monkeypatch: pytest.MonkeyPatch, sim: Simulator, config: Config, clock: Clock
) -> None:
    monkeypatch.setitem(LIMITS, "openai", Limits(requests=3, bytes=10**9))
    jobs = many(config, GPT, 7) + many(config, "haiku", 2) + many(config, GPT, 1, "b-2")
    parts = batch_parts(jobs, config)
    assert [(p.api, len(p.requests)) for p in parts] == [
        ("openai", 3),
        ("openai", 3),
        ("openai", 2),
        ("anthropic", 2),
    ]
    assert all(p.model == GPT for p in parts if p.api == "openai")
    size = parts[0].requests[0].size
    monkeypatch.setitem(LIMITS, "anthropic", Limits(requests=100, bytes=size * 2 + 20))
    assert [len(p.requests) for p in batch_parts(many(config, "haiku", 5), config)] == [2, 2, 1]
    monkeypatch.setitem(LIMITS, "openai", Limits(requests=3, bytes=10))
    with pytest.raises(TooLarge, match="job 'q0' of batch 'b-1': its openai batch line is"):
        batch_parts(many(config, GPT, 1), config)
    # the parts run as batches of their own, every job answered once
    monkeypatch.setitem(LIMITS, "openai", Limits(requests=2, bytes=10**9))
    done: list[JobOutcome] = []
    for part in batch_parts(many(config, GPT, 5), config):
        done += answered(part, config, clock)
    assert sorted(o.custom_id for o in done) == [f"q{i}" for i in range(5)]


def test_one_model_per_openai_file(config: Config) -> None:
    data = copy.deepcopy(RAW)
    data["models"]["gpt-4.1-mini"] = data["models"][GPT] | {"model_id": "gpt-4.1-mini"}
    two = parse_config(data)
    jobs = many(two, GPT, 2) + many(two, "gpt-4.1-mini", 2, "b-2")
    assert [p.model for p in batch_parts(jobs, two)] == [GPT, "gpt-4.1-mini"]


@given(
    batch_id=st.from_regex(BATCH_ID_PATTERN.strip("^$"), fullmatch=True),
    custom_ids=st.lists(st.text(min_size=1, max_size=512), min_size=1, max_size=20, unique=True),
)
def test_custom_ids_fit_anthropics_rule_and_map_back(batch_id: str, custom_ids: list[str]) -> None:
    ids = CustomIds()
    keys = [ids.add(batch_id, custom_id) for custom_id in custom_ids]
    assert len(set(keys)) == len(keys)
    for key, custom_id in zip(keys, custom_ids, strict=True):
        assert ids_module.PATTERN.fullmatch(key)
        assert key == provider_custom_id(batch_id, custom_id)  # stable: derived again
        assert ids.job_of(key) == (batch_id, custom_id)
    with pytest.raises(ValueError, match="is already in this provider batch"):
        ids.add(batch_id, custom_ids[0])
    assert provider_custom_id(batch_id + "x", custom_ids[0]) != keys[0]


def test_a_collision_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ids_module, "DIGITS", 0)  # every id the same
    ids = CustomIds()
    ids.add("b", "one")
    with pytest.raises(ValueError, match="collides with job 'one' of batch 'b'"):
        ids.add("b", "two")


def test_malformed_result_lines_name_the_batch_file_and_line(config: Config) -> None:
    jobs = many(config, GPT, 2)
    [part] = batch_parts(jobs, config)
    key = part.requests[0].key
    cases = [
        (b"{not json\n", "line 1: not JSON"),
        (b'{"id": "x"}\n', "line 1: not an object with a custom_id"),
        (b'{"custom_id": "stranger"}\n', "custom_id 'stranger' is not a job of this batch"),
        (
            json.dumps({"custom_id": key, "response": None, "error": None}).encode(),
            "neither a response with a chat.completion nor an error",
        ),
    ]

    for content, words in cases:
        lines = ResultLines("batch_abc", part)
        with pytest.raises(MalformedResult) as caught:
            lines.read(b"\n" + content, "output_file file-1", line_outcome)
        assert str(caught.value).startswith("provider batch batch_abc, output_file file-1, line 2")
        assert words.removeprefix("line 1: ") in str(caught.value)
    twice = json.dumps({"custom_id": key, "error": {"code": "batch_expired", "message": "m"}})
    lines = ResultLines("batch_abc", part)
    with pytest.raises(MalformedResult, match=r"line 2: custom_id .* has a result already"):
        lines.read(f"{twice}\n{twice}\n".encode(), "error_file file-2", line_outcome)


def test_a_usage_the_line_reports_is_read_as_the_synchronous_path_reads_it(
    config: Config,
) -> None:
    [part] = batch_parts(many(config, GPT, 1), config)
    key = part.requests[0].key
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": 4,
        "prompt_tokens_details": {"cached_tokens": 6},
    }
    body = {"id": "c", "object": "chat.completion", "choices": [], "usage": usage}
    line = {"custom_id": key, "response": {"status_code": 200, "body": body}, "error": None}

    lines = ResultLines("batch_abc", part)
    lines.read(json.dumps(line).encode(), "output_file f", line_outcome)
    assert lines.outcomes[0].usage == Usage.from_api(usage)


def test_the_key_is_never_in_an_error(config: Config) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": {"message": f"bad key {KEY}", "code": "auth"}})

    client = OpenAIBatchClient(
        config, "openai", lambda _: KEY, transport=httpx.MockTransport(refuse)
    )
    with pytest.raises(Exception) as caught:
        client.poll("batch_1")
    assert KEY not in str(caught.value) and "401" in str(caught.value)
    assert not caught.value.transient  # type: ignore[attr-defined]
