"""The simulator bills what a real provider bills: every answer it generated, damaged,
reset, too slow for the client or without usage, whether or not the client read it.

Over real HTTP on 127.0.0.1 (a simulator on a background thread). Expected tokens come
from the simulator's published token rule (``count_tokens``, 3 per request, 4 per
message), never from the client's pricing or estimates.
"""

from __future__ import annotations

import ast
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk
from pydantic import ValidationError

from chatbatch.local.simulator import (
    FaultKind,
    Simulator,
    SimulatorSettings,
    answer_for,
    count_tokens,
    parse_args,
)

MODEL = "deepseek-chat"
OTHER = "gpt-4.1"
HANG_S = 0.8  # a hang, and a slow answer's wait
IMPATIENT_S = 0.25  # a client's read timeout, shorter than HANG_S
CAP = 16


@pytest.fixture
def sim() -> Iterator[Simulator]:
    settings = SimulatorSettings(hang_s=HANG_S, rpm=1000, tpm=1_000_000)
    with Simulator(settings) as simulator:
        yield simulator


def body(text: str, model: str = MODEL, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": text}]
    return {"model": model, "messages": messages, "max_tokens": CAP} | extra


def bill(text: str, calls: int = 1) -> dict[str, int]:
    """What one uncached answer to ``text`` bills (``billed_by_model``'s shape)."""
    prompt = 3 + 4 + count_tokens(text)
    completion = answer_for(body(text)["messages"], CAP)[1]
    return {
        "calls": calls,
        "prompt_tokens": prompt * calls,
        "cached_tokens": 0,
        "cache_write_tokens": 0,  # chat completions write no cache (Anthropic's messages do)
        "cache_write_1h_tokens": 0,
        "completion_tokens": completion * calls,
    }


def add(*bills: dict[str, int]) -> dict[str, int]:
    return {k: sum(b[k] for b in bills) for k in bills[0]}


def post(sim: Simulator, payload: dict[str, Any], read_s: float = 5.0) -> httpx.Response:
    timeout = httpx.Timeout(5.0, read=read_s)
    return httpx.post(sim.base_url + "/chat/completions", json=payload, timeout=timeout)


def stats(sim: Simulator) -> dict[str, Any]:
    """``GET /stats``, as a client of the simulator sees it."""
    got: dict[str, Any] = httpx.get(sim.url + "/stats").json()
    return got


def events(text: str) -> list[str]:
    return [line.removeprefix("data: ") for line in text.split("\n") if line.startswith("data:")]


# --- each fault kind: what the client sees, what is billed ---------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("kind", ["truncate", "corrupt"])
def test_a_damaged_answer_is_billed_in_full(sim: Simulator, kind: str, stream: bool) -> None:
    sim.inject(kind)
    extra = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
    reply = post(sim, body("damaged", **extra))
    assert reply.status_code == 200
    if not stream:
        with pytest.raises(json.JSONDecodeError):
            reply.json()
    elif kind == "truncate":
        assert "[DONE]" not in reply.text and '"usage"' not in reply.text
    else:
        assert events(reply.text)[-1] == "[DONE]"
        with pytest.raises(json.JSONDecodeError):
            [json.loads(e) for e in events(reply.text)[:-1]]
    seen = stats(sim)
    assert seen["billed_by_model"] == {MODEL: bill("damaged")}
    assert (seen["billed_calls"], seen["completions"], seen["billed_unread"]) == (1, 0, 1)
    assert seen["prompt_tokens"] == bill("damaged")["prompt_tokens"]
    assert seen["completion_tokens"] == bill("damaged")["completion_tokens"]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_reset_after_generation_is_billed_and_a_reset_before_it_is_not(
    sim: Simulator, stream: bool
) -> None:
    sim.inject("reset", "reset_after")
    for text in ("before", "after"):
        with pytest.raises(httpx.TransportError) as caught:
            post(sim, body(text, stream=stream))
        assert not isinstance(caught.value, httpx.TimeoutException)
    seen = stats(sim)
    assert seen["by_status"] == {"reset": 2}
    assert seen["faults"] == {"reset": 1, "reset_after": 1}
    assert seen["billed_by_model"] == {MODEL: bill("after")}  # "before" billed nothing
    assert (seen["billed_calls"], seen["completions"], seen["billed_unread"]) == (1, 0, 1)


def test_a_request_reset_before_generation_takes_a_request_and_no_tokens(
    sim: Simulator,
) -> None:
    """Rate-limit accounting: every request received counts as one; only the tokens of a
    generated answer count in the tokens window (reset_after's do, reset's do not)."""
    first = post(sim, body("warm up"))
    used = bill("warm up")
    tokens_left = int(first.headers["x-ratelimit-remaining-tokens"])
    assert tokens_left == 1_000_000 - used["prompt_tokens"] - used["completion_tokens"]
    assert first.headers["x-ratelimit-remaining-requests"] == "999"
    sim.inject("reset", "hang", "500", "reset_after")
    with pytest.raises(httpx.TransportError):
        post(sim, body("reset"))
    with pytest.raises(httpx.ReadTimeout):
        post(sim, body("hang"), read_s=IMPATIENT_S)
    assert post(sim, body("500")).status_code == 500
    after = bill("reset_after")
    with pytest.raises(httpx.TransportError):
        post(sim, body("reset_after"))
    last = post(sim, body("last"))
    final = bill("last")
    generated = sum(b["prompt_tokens"] + b["completion_tokens"] for b in (used, after, final))
    assert last.headers["x-ratelimit-remaining-tokens"] == str(1_000_000 - generated)
    assert last.headers["x-ratelimit-remaining-requests"] == str(1000 - 6)
    assert stats(sim)["max_tokens_60s"] == generated


def test_a_slow_answer_is_billed_whether_or_not_the_client_waits(sim: Simulator) -> None:
    sim.inject("slow")
    with pytest.raises(httpx.ReadTimeout):
        post(sim, body("impatient"), read_s=IMPATIENT_S)
    time.sleep(HANG_S)  # past the moment the answer would have been sent: nobody there
    seen = stats(sim)
    assert seen["by_status"] == {"200": 1} and seen["faults"] == {"slow": 1}
    assert seen["billed_by_model"] == {MODEL: bill("impatient")}
    assert (seen["billed_calls"], seen["completions"], seen["billed_unread"]) == (1, 0, 1)

    for stream in (False, True):
        sim.inject("slow")
        start = time.monotonic()
        reply = post(sim, body("patient", stream=stream), read_s=HANG_S + 3)
        assert time.monotonic() - start >= HANG_S
        assert reply.status_code == 200
        content = answer_for(body("patient")["messages"], CAP)[0]
        if stream:
            assert events(reply.text)[-1] == "[DONE]"
        else:
            assert reply.json()["choices"][0]["message"]["content"] == content
            assert reply.json()["usage"]["prompt_tokens"] == bill("patient")["prompt_tokens"]
    seen = stats(sim)
    assert (seen["billed_calls"], seen["completions"], seen["billed_unread"]) == (3, 2, 1)
    assert seen["duplicates"] == 1  # the same body delivered whole twice
    # the second "patient" prompt is cached whole: same prefix as the first
    patient = bill("patient", calls=2)
    patient["cached_tokens"] = patient["prompt_tokens"] // 2
    assert seen["billed_by_model"] == {MODEL: add(bill("impatient"), patient)}


def test_a_stream_whose_client_leaves_midway_is_billed_and_not_delivered(
    sim: Simulator,
) -> None:
    sim.configure(per_token_ms=50, answer_tokens=20)
    payload = body("long", stream=True) | {"max_tokens": 20}
    with httpx.stream("POST", sim.base_url + "/chat/completions", json=payload) as reply:
        first = next(reply.iter_bytes())
    assert first  # a frame arrived, then the client closed the connection
    time.sleep(20 * 0.05 + 0.3)  # past the stream's end
    seen = stats(sim)
    assert seen["billed_by_model"] == {MODEL: bill("long") | {"completion_tokens": 20}}
    assert (seen["billed_calls"], seen["completions"], seen["billed_unread"]) == (1, 0, 1)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_an_answer_without_usage_is_whole_valid_and_billed(sim: Simulator, stream: bool) -> None:
    sim.inject("no_usage")
    extra = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
    reply = post(sim, body("no usage", **extra))
    content = answer_for(body("no usage")["messages"], CAP)[0]
    if stream:
        frames = events(reply.text)
        assert frames[-1] == "[DONE]"
        chunks = [json.loads(f) for f in frames[:-1]]
        assert all("usage" not in c for c in chunks)
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == content
        assert chunks[-1]["choices"][0]["finish_reason"] is not None
    else:
        answer = reply.json()
        assert "usage" not in answer
        assert answer["choices"][0]["message"]["content"] == content
    seen = stats(sim)
    assert seen["billed_by_model"] == {MODEL: bill("no usage")}
    assert (seen["billed_calls"], seen["completions"], seen["billed_unread"]) == (1, 1, 0)


def test_the_openai_sdk_reads_an_answer_without_usage_as_usage_none(sim: Simulator) -> None:
    """The shapes are the SDK's: every chunk parses as a ``ChatCompletionChunk``; with
    ``include_usage`` asked, a whole stream normally ends in a usage chunk (checked
    first), and under ``no_usage`` none carries usage."""
    client = openai.OpenAI(base_url=sim.base_url, api_key="sk-sim", max_retries=0)
    messages: Any = body("sdk")["messages"]

    def streamed() -> list[ChatCompletionChunk]:
        chunks = client.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=CAP,
            stream=True,
            stream_options={"include_usage": True},
        )
        return list(chunks)

    whole = streamed()
    assert whole[-1].usage is not None and whole[-1].usage.prompt_tokens > 0
    sim.inject("no_usage", "no_usage")
    bare = streamed()
    assert [c.usage for c in bare] == [None] * len(bare)
    text = "".join(c.choices[0].delta.content or "" for c in bare if c.choices)
    assert text == answer_for(messages, CAP)[0]
    plain = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=CAP)
    assert plain.usage is None and plain.choices[0].message.content == text
    seen = stats(sim)
    assert (seen["billed_calls"], seen["completions"], seen["billed_unread"]) == (3, 3, 0)


# --- a scripted sequence, and a gateway that always drops usage ----------------------


def test_a_scripted_sequence_bills_exactly_the_answers_generated(sim: Simulator) -> None:
    script: list[Any] = ["truncate", "corrupt", "reset_after", "slow", "no_usage", "hang"]
    script += ["reset", "500", {"kind": "429", "retry_after_s": 1}]
    queued = httpx.post(sim.url + "/admin/faults", json={"faults": script}).json()
    assert queued == {"queued": 9}
    models = [MODEL, OTHER, MODEL, OTHER, MODEL, OTHER, MODEL, OTHER, MODEL]
    statuses: list[int | str] = []
    for index, model in enumerate(models):
        try:
            reply = post(sim, body(f"q{index}", model), read_s=IMPATIENT_S)
            statuses.append(reply.status_code)
        except httpx.TimeoutException:
            statuses.append("timeout")
        except httpx.TransportError:
            statuses.append("reset")
    assert statuses == [200, 200, "reset", "timeout", 200, "timeout", "reset", 500, 429]
    assert post(sim, body("q9", OTHER)).status_code == 200  # the script is spent
    time.sleep(HANG_S)  # the slow answer's moment has passed, its client long gone
    seen = stats(sim)
    kinds = [f if isinstance(f, str) else f["kind"] for f in script]
    assert seen["faults"] == dict.fromkeys(kinds, 1)
    assert seen["by_status"] == {"200": 5, "reset": 2, "hang": 1, "500": 1, "429": 1}
    assert seen["requests"] == 10
    # billed: truncate, corrupt, reset_after, slow, no_usage, and the last whole answer
    assert seen["billed_by_model"] == {
        MODEL: add(bill("q0"), bill("q2"), bill("q4")),
        OTHER: add(bill("q1"), bill("q3"), bill("q9")),
    }
    assert (seen["billed_calls"], seen["completions"], seen["billed_unread"]) == (6, 2, 4)
    totals = add(*seen["billed_by_model"].values())
    assert seen["prompt_tokens"] == totals["prompt_tokens"]
    assert seen["completion_tokens"] == totals["completion_tokens"]


def test_a_gateway_that_always_drops_usage_is_one_fault_rate(sim: Simulator) -> None:
    changed = httpx.post(sim.url + "/admin/settings", json={"fault_rates": {"no_usage": 1.0}})
    assert changed.json()["fault_rates"] == {"no_usage": 1.0}
    for index in range(5):
        assert "usage" not in post(sim, body(f"g{index}")).json()
    seen = stats(sim)
    assert (seen["billed_calls"], seen["completions"], seen["faults"]) == (5, 5, {"no_usage": 5})
    # rates adding up past 1 are refused, whichever kinds they name
    over = {"fault_rates": {"no_usage": 0.6, "slow": 0.3, "reset_after": 0.2}}
    refused = httpx.post(sim.url + "/admin/settings", json=over)
    assert refused.status_code == 400 and "add up to 1.1" in refused.json()["error"]["message"]
    with pytest.raises(ValidationError, match=r"add up to 1\.1"):
        SimulatorSettings.model_validate(over)
    settings, _, _ = parse_args(["--fault", "no_usage=1"])
    assert settings.fault_rates == {FaultKind.no_usage: 1.0}


# --- the simulator is an adversary: it shares nothing with the client's arithmetic ----


def test_the_simulator_imports_nothing_of_the_client_but_the_config() -> None:
    package = Path(__file__).resolve().parents[2] / "functions/chatbatch/local/simulator"
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.startswith("chatbatch."):
                    allowed = ("chatbatch.local.simulator", "chatbatch.core.config")
                    assert name.startswith(allowed), f"{path.name}: imports {name}"
