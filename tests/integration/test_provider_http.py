"""The provider client against the provider simulator, over real HTTP on 127.0.0.1.

Each test starts its own simulator (a background thread, a free port) and a client
configured with short timeouts; faults are injected for the next requests in order.
Where only the length of a wait matters, ``sleep`` is recorded instead of waited.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import random
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

from chatbatch.core.config import Config, Provider, Retries
from chatbatch.local.simulator import (
    Fault,
    FaultKind,
    Simulator,
    SimulatorSettings,
    answer_for,
    count_tokens,
)
from chatbatch.provider import client as provider_module
from chatbatch.provider import sse as sse_module
from chatbatch.provider.attempt import Attempt, Completion
from chatbatch.provider.client import BeforeRetry, ProviderClient, tls_context
from chatbatch.provider.errors import ProviderError
from chatbatch.provider.retry import RateLimitInfo, backoff_s, parse_duration, parse_retry_after

KEY = "sk-test-3f9c2a71b8d54e06a1c7"
MODEL = "deepseek-chat"
SYSTEM = "You are terse. Answer in one line."


def _body(question: str = "What is the capital of France?", **extra: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    return {"model": MODEL, "messages": messages, "max_tokens": 64} | extra


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(SimulatorSettings(api_key=KEY, hang_s=5)) as simulator:
        yield simulator


def _config(
    config: Config,
    sim: Simulator,
    *,
    read_s: float = 2.0,
    max_attempts: int = 5,
    max_retry_after_s: float = 60.0,
) -> Config:
    timeouts = {"connect_s": 2, "read_s": read_s, "write_s": 2, "pool_s": 2, "total_s": 30}
    provider = Provider.model_validate({"base_url": sim.base_url, "timeouts": timeouts})
    retries = Retries(
        max_attempts=max_attempts,
        base_s=0.01,
        max_backoff_s=0.05,
        max_retry_after_s=max_retry_after_s,
    )
    return config.model_copy(
        update={"providers": dict.fromkeys(config.providers, provider), "retries": retries}
    )


class RecordedSleep:
    """Stands in for asyncio.sleep: remembers each delay, waits for none."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


def _call(
    config: Config,
    body: dict[str, Any],
    *,
    key: str = KEY,
    deadline_s: float | None = None,
    sleep: RecordedSleep | None = None,
    hook: list[tuple[str, Attempt, RateLimitInfo | None]] | None = None,
    before_retry: BeforeRetry | None = None,
) -> Completion:
    async def run() -> Completion:
        client = ProviderClient(
            config,
            lambda _provider: key,
            on_attempt=(lambda *seen: hook.append(seen)) if hook is not None else None,
            sleep=sleep or asyncio.sleep,
            rng=random.Random(7),
        )
        try:
            return await client.complete(
                MODEL, body, deadline_s=deadline_s, before_retry=before_retry
            )
        finally:
            await client.aclose()

    return asyncio.run(run())


def _fails(config: Config, body: dict[str, Any], **kwargs: Any) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        _call(config, body, **kwargs)
    return caught.value


def _statuses(attempts: list[Attempt]) -> list[int | None]:
    return [a.status for a in attempts]


# --- answers -------------------------------------------------------------------------


def test_each_request_gets_its_own_deterministic_answer(config: Config, sim: Simulator) -> None:
    cfg = _config(config, sim)
    paris, rome = _call(cfg, _body("Capital of France?")), _call(cfg, _body("Capital of Italy?"))
    for completion, question in ((paris, "Capital of France?"), (rome, "Capital of Italy?")):
        expected, tokens, finish = answer_for(_body(question)["messages"], 64)
        assert completion.content == expected
        assert question in expected
        assert completion.body["choices"][0]["finish_reason"] == finish
        assert completion.usage.completion_tokens == tokens
        assert completion.usage.prompt_tokens == 3 + 4 + count_tokens(SYSTEM) + 4 + 4
        assert _statuses(completion.attempts) == [200]
    assert paris.content != rome.content
    assert _call(cfg, _body("Capital of France?")).content == paris.content


def test_calls_share_one_connection_pool(config: Config, sim: Simulator) -> None:
    cfg = _config(config, sim)
    client = ProviderClient(cfg, lambda _provider: KEY)

    async def run() -> None:
        for i in range(5):
            await client.complete(MODEL, _body(f"sequential {i}"))
        batch = [client.complete(MODEL, _body(f"concurrent {i}")) for i in range(30)]
        await asyncio.gather(*batch)
        await client.aclose()

    asyncio.run(run())
    stats = sim.stats()
    assert stats.completions == 35
    assert stats.connections <= cfg.providers["deepseek"].max_connections


def test_a_client_serves_successive_event_loops(config: Config, sim: Simulator) -> None:
    """A Lambda handler may asyncio.run() per invocation with one module-level client."""
    client = ProviderClient(_config(config, sim), lambda _provider: KEY)
    first = asyncio.run(client.complete(MODEL, _body()))
    second = asyncio.run(client.complete(MODEL, _body()))
    assert first.content == second.content


def test_every_pool_of_the_process_shares_one_tls_context(config: Config, sim: Simulator) -> None:
    """A pool per event loop and provider, each verifying TLS with the one context built
    for the process (~60 ms of CPU each otherwise: dozens of local instances start at once)."""
    client = ProviderClient(_config(config, sim), lambda _provider: KEY)
    contexts = []

    async def run() -> None:
        await client.complete(MODEL, _body())
        for pool in client._pools[asyncio.get_running_loop()].values():
            contexts.append(pool._transport._pool._ssl_context)  # type: ignore[attr-defined]

    asyncio.run(run())
    asyncio.run(run())  # a second loop: its own pool
    assert len(contexts) == 2 and all(c is tls_context() for c in contexts)
    assert tls_context().verify_mode is ssl.CERT_REQUIRED and tls_context().check_hostname


# --- retries -------------------------------------------------------------------------


def test_a_429_with_retry_after_2_waits_2_seconds_then_succeeds(
    config: Config, sim: Simulator
) -> None:
    sim.inject(Fault(kind=FaultKind.rate_limited, retry_after_s=2))
    start = time.monotonic()
    completion = _call(_config(config, sim), _body())
    elapsed = time.monotonic() - start
    assert 1.95 <= elapsed < 4
    assert _statuses(completion.attempts) == [429, 200]
    assert completion.attempts[0].retry_after_s == 2
    assert completion.content == answer_for(_body()["messages"], 64)[0]


def test_retry_after_ms_is_preferred_and_server_delays_are_capped(
    config: Config, sim: Simulator
) -> None:
    sim.inject(
        Fault(kind=FaultKind.rate_limited, retry_after_s=30, retry_after_ms=250),
        Fault(kind=FaultKind.error_503, retry_after_s=600),
        Fault(kind=FaultKind.rate_limited),
    )
    sleep = RecordedSleep()
    completion = _call(_config(config, sim, max_retry_after_s=5), _body(), sleep=sleep)
    assert _statuses(completion.attempts) == [429, 503, 429, 200]
    assert sleep.delays[:2] == [0.25, 5.0]
    assert 0 <= sleep.delays[2] <= 0.04  # no server delay: full jitter under base_s * 2**2


def test_5xx_are_retried_then_succeed_and_bill_nothing_but_the_answer(
    config: Config, sim: Simulator
) -> None:
    sim.inject("500", "503")
    sleep = RecordedSleep()
    completion = _call(_config(config, sim), _body(), sleep=sleep)
    assert _statuses(completion.attempts) == [500, 503, 200]
    assert "server had an error" in (completion.attempts[0].error or "")
    assert not any(a.maybe_billed for a in completion.attempts)
    assert len(sleep.delays) == 2
    stats = sim.stats()
    assert stats.by_status == {"500": 1, "503": 1, "200": 1}
    assert (stats.completions, stats.duplicates) == (1, 0)
    assert (stats.billed_calls, stats.billed_unread) == (1, 0)  # nothing generated before


def test_each_retry_waits_for_the_callers_go_and_a_no_ends_the_call(
    config: Config, sim: Simulator
) -> None:
    """The worker takes rate-limit capacity for every retry there: each one is a request."""
    asked: list[int] = []

    async def go() -> bool:
        asked.append(sim.stats().requests)  # asked after the failure, before the retry
        return True

    sim.inject("500", "429")
    completion = _call(_config(config, sim), _body(), sleep=RecordedSleep(), before_retry=go)
    assert _statuses(completion.attempts) == [500, 429, 200]
    assert asked == [1, 2]

    async def no() -> bool:
        return False

    sim.inject("503")
    err = _fails(_config(config, sim), _body(), sleep=RecordedSleep(), before_retry=no)
    assert _statuses(err.attempts) == [503]  # the retry was never sent
    assert err.message.startswith("no rate-limit capacity to retry") and not err.permanent
    assert sim.stats().requests == 4


def test_a_reset_after_the_request_left_ends_the_call_maybe_billed(
    config: Config, sim: Simulator
) -> None:
    # The provider may have generated (and billed) the answer the reset lost: no second
    # attempt goes out on the same money; the caller books this one first.
    sim.inject("500", "reset")
    err = _fails(_config(config, sim), _body(), sleep=RecordedSleep())
    assert _statuses(err.attempts) == [500, None]
    assert [a.maybe_billed for a in err.attempts] == [False, True]
    assert err.maybe_billed and not err.permanent
    assert "answer not read" in str(err)
    assert "Error" in (err.attempts[1].error or "")  # ReadError / RemoteProtocolError
    assert sim.stats().requests == 2


@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_reset_after_it_was_billed_is_maybe_billed(
    config: Config, sim: Simulator, stream: bool
) -> None:
    sim.inject("reset_after")
    err = _fails(_config(config, sim), _body(stream=stream), sleep=RecordedSleep())
    assert _statuses(err.attempts) == [None] and err.maybe_billed
    assert (sim.stats().billed_calls, sim.stats().billed_unread) == (1, 1)


@pytest.mark.parametrize("stream", [False, True])
def test_a_whole_answer_without_usage_is_a_completion_whose_usage_is_unknown(
    config: Config, sim: Simulator, stream: bool
) -> None:
    sim.inject("no_usage")
    completion = _call(_config(config, sim), _body(stream=stream))
    assert completion.usage is None, "an unknown usage is never read as 0 tokens"
    assert completion.content == answer_for(_body()["messages"], 64)[0]
    assert len(completion.attempts) == 1 and not completion.attempts[0].maybe_billed
    assert sim.stats().billed_calls == 1


def test_a_request_that_never_left_is_retried_and_never_maybe_billed(config: Config) -> None:
    with socket.socket() as closed:  # a port nobody listens on: every connect is refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    provider = Provider.model_validate({"base_url": f"http://127.0.0.1:{port}/v1"})
    cfg = config.model_copy(
        update={
            "providers": dict.fromkeys(config.providers, provider),
            "retries": Retries(max_attempts=3, base_s=0.01, max_backoff_s=0.02),
        }
    )
    err = _fails(cfg, _body(), sleep=RecordedSleep())
    assert len(err.attempts) == 3, "a connect error is retried: nothing was sent"
    assert not err.maybe_billed and not any(a.maybe_billed for a in err.attempts)
    assert "ConnectError" in (err.attempts[0].error or "")


def test_a_200_with_truncated_json_ends_the_call_maybe_billed(
    config: Config, sim: Simulator
) -> None:
    sim.inject("truncate")
    err = _fails(_config(config, sim), _body(), sleep=RecordedSleep())
    assert _statuses(err.attempts) == [200]
    assert err.maybe_billed and not err.permanent
    assert "not valid JSON" in (err.attempts[0].error or "")
    completion = _call(_config(config, sim), _body())  # the next call reads it whole
    assert completion.content == answer_for(_body()["messages"], 64)[0]
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    stats = sim.stats()
    assert stats.completions == 1  # the mangled answer is not delivered whole
    assert (stats.billed_calls, stats.billed_unread) == (2, 1)  # but it is billed
    assert stats.completion_tokens == 2 * completion.usage.completion_tokens


def test_out_of_attempts_is_a_transient_error(config: Config, sim: Simulator) -> None:
    sim.inject("500", "500", "500")
    err = _fails(_config(config, sim, max_attempts=3), _body(), sleep=RecordedSleep())
    assert not err.permanent
    assert err.status == 500
    assert len(err.attempts) == 3
    assert "out of attempts" in str(err)


@pytest.mark.parametrize(
    ("change", "words", "code"),
    [
        ({"temperature": 3}, "temperature", "decimal_above_max_value"),
        ({"max_tokens": 0}, "max_tokens", "integer_below_min_value"),
        ({"messages": []}, "messages", "empty_array"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "'user'", "invalid_value"),
        ({"messages": [{"role": "user", "content": 42}]}, "expected a string", "invalid_type"),
    ],
)
def test_a_400_is_not_retried_and_keeps_the_providers_message(
    config: Config, sim: Simulator, change: dict[str, Any], words: str, code: str
) -> None:
    err = _fails(_config(config, sim), _body() | change)
    assert err.permanent
    assert err.status == 400
    assert words in err.message
    assert err.code == code
    assert len(err.attempts) == 1
    assert sim.stats().requests == 1


def test_401_and_404_are_permanent(config: Config, sim: Simulator) -> None:
    cfg = _config(config, sim)
    wrong_key = "sk-wrong-0000000000000000"
    unauthorized = _fails(cfg, _body(), key=wrong_key)
    assert (unauthorized.status, unauthorized.permanent) == (401, True)
    assert "Incorrect API key" in unauthorized.message
    assert wrong_key not in str(unauthorized)
    missing = _fails(cfg, _body(model="no-such-model"))
    assert (missing.status, missing.permanent, missing.code) == (404, True, "model_not_found")
    assert "no-such-model" in missing.message
    assert len(unauthorized.attempts) == len(missing.attempts) == 1


# --- timeouts and the deadline -------------------------------------------------------


def test_a_read_timeout_after_the_request_left_ends_the_call_maybe_billed(
    config: Config, sim: Simulator
) -> None:
    sim.inject("hang")
    err = _fails(_config(config, sim, read_s=0.3), _body(), sleep=RecordedSleep())
    assert _statuses(err.attempts) == [None]
    assert err.maybe_billed and not err.permanent
    assert "ReadTimeout" in (err.attempts[0].error or "")
    assert 250 <= err.attempts[0].latency_ms < 2000


def test_the_deadline_stops_retrying_in_time(config: Config, sim: Simulator) -> None:
    sim.inject(*[Fault(kind=FaultKind.error_503, retry_after_s=0.3)] * 20)
    start = time.monotonic()
    err = _fails(_config(config, sim, max_attempts=20), _body(), deadline_s=1.0)
    elapsed = time.monotonic() - start
    assert elapsed < 1.4
    assert not err.permanent and not err.maybe_billed
    assert 2 <= len(err.attempts) < 20
    assert "deadline" in str(err)


def test_no_retry_starts_in_the_deadlines_last_moment(config: Config, sim: Simulator) -> None:
    """Retries 0.3 s apart, a deadline at 0.8 s: the third attempt would start at 0.6 s
    with 0.2 s left (under ``MIN_ATTEMPT_S``), most likely cut after it was sent, a request
    billed for nothing: it is not started."""
    sim.inject(*[Fault(kind=FaultKind.error_503, retry_after_s=0.3)] * 20)
    err = _fails(_config(config, sim, max_attempts=20), _body(), deadline_s=0.8)
    assert not err.maybe_billed and "deadline" in str(err)
    assert len(err.attempts) <= 2
    assert sim.stats().requests == len(err.attempts)


def test_the_deadline_inside_an_attempt_leaves_it_maybe_billed(
    config: Config, sim: Simulator
) -> None:
    sim.configure(latency_ms=3000)  # the answer would come after the deadline
    start = time.monotonic()
    err = _fails(_config(config, sim, read_s=10), _body(), deadline_s=1.0)
    assert time.monotonic() - start < 1.4
    assert _statuses(err.attempts) == [None]
    assert err.maybe_billed and "deadline" in (err.attempts[0].error or "")


def test_a_server_delay_past_the_deadline_gives_up_at_once_and_says_when(
    config: Config, sim: Simulator
) -> None:
    sim.inject(Fault(kind=FaultKind.rate_limited, retry_after_s=30))
    start = time.monotonic()
    err = _fails(_config(config, sim), _body(), deadline_s=5)
    assert time.monotonic() - start < 1
    assert (err.status, err.permanent, err.retry_after_s) == (429, False, 30)
    assert len(err.attempts) == 1


# --- streaming -----------------------------------------------------------------------


def test_corrupt_and_truncated_streams_end_the_call_maybe_billed_and_the_text_is_whole(
    config: Config, sim: Simulator
) -> None:
    cfg = _config(config, sim)
    plain = _call(cfg, _body())
    sim.inject("corrupt", "truncate")
    corrupt = _fails(cfg, _body(stream=True), sleep=RecordedSleep())
    cut = _fails(cfg, _body(stream=True), sleep=RecordedSleep())
    for err in (corrupt, cut):
        assert _statuses(err.attempts) == [200] and err.maybe_billed
    assert "corrupt stream chunk" in (corrupt.attempts[0].error or "")
    assert "without data: [DONE]" in (cut.attempts[0].error or "")
    streamed = _call(cfg, _body(stream=True))
    assert streamed.content == plain.content
    assert streamed.usage is not None and plain.usage is not None
    assert streamed.usage.completion_tokens == plain.usage.completion_tokens
    assert streamed.usage.prompt_tokens == plain.usage.prompt_tokens
    stats = sim.stats()  # the two damaged streams are billed, not delivered whole
    assert (stats.billed_calls, stats.completions, stats.billed_unread) == (4, 2, 2)
    assert stats.billed_by_model[MODEL].completion_tokens == 4 * plain.usage.completion_tokens


def test_keepalives_split_writes_and_the_final_usage_chunk(config: Config, sim: Simulator) -> None:
    sim.configure(write_bytes=3, null_usage_choices=True, stream_chunk_tokens=2)
    cfg = _config(config, sim)
    raw = httpx.post(
        sim.base_url + "/chat/completions",
        json=_body(stream=True, stream_options={"include_usage": True}),
        headers={"authorization": f"Bearer {KEY}"},
    ).text
    assert raw.startswith(": keep-alive\n\n")
    assert '"choices":null,"usage":' in raw
    plain = _call(cfg, _body())
    streamed = _call(cfg, _body(stream=True))  # the client asks for the usage chunk itself
    assert streamed.content == plain.content
    assert streamed.usage.prompt_tokens == plain.usage.prompt_tokens > 0
    assert streamed.usage.completion_tokens == plain.usage.completion_tokens > 0
    assert streamed.body["object"] == "chat.completion"
    assert set(plain.body) - {"system_fingerprint"} <= set(streamed.body)
    assert streamed.body["choices"][0]["finish_reason"] == "stop"


def test_an_answer_ending_in_done_is_kept_when_the_server_never_ends_the_body(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sse_module, "AFTER_DONE_S", 0.2)
    chunk = {"id": "c1", "choices": [{"index": 0, "delta": {"content": "hi"}}]}
    events = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        writer.write(head + b"transfer-encoding: chunked\r\n\r\n")
        writer.write(b"%x\r\n%s\r\n" % (len(events), events))
        await writer.drain()
        await asyncio.sleep(30)

    async def run() -> Completion:
        server = await asyncio.start_server(stall, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        timeouts = {"read_s": 5}
        provider = Provider.model_validate(
            {"base_url": f"http://127.0.0.1:{port}/v1", "timeouts": timeouts}
        )
        cfg = config.model_copy(update={"providers": dict.fromkeys(config.providers, provider)})
        client = ProviderClient(cfg, lambda _provider: KEY)
        try:
            return await client.complete(MODEL, _body(stream=True))
        finally:
            await client.aclose()
            server.close()

    start = time.monotonic()
    completion = asyncio.run(run())
    assert completion.content == "hi"
    assert time.monotonic() - start < 2


# --- rate limits ---------------------------------------------------------------------


def test_rate_limit_headers_reach_the_caller_and_a_real_429_says_when(
    config: Config, sim: Simulator
) -> None:
    sim.configure(rpm=2, tpm=50_000)
    cfg = _config(config, sim)
    seen: list[tuple[str, Attempt, RateLimitInfo | None]] = []
    first = _call(cfg, _body("one"), hook=seen)
    limits = first.rate_limits
    assert limits is not None
    used = first.usage.total_tokens
    assert (limits.limit_requests, limits.remaining_requests) == (2, 1)
    assert (limits.limit_tokens, limits.remaining_tokens) == (50_000, 50_000 - used)
    assert limits.reset_requests_s is not None and 59 < limits.reset_requests_s <= 60
    second = _call(cfg, _body("two"), hook=seen)
    assert second.rate_limits is not None and second.rate_limits.remaining_requests == 0
    err = _fails(cfg, _body("three"), hook=seen, deadline_s=3)
    assert (err.status, err.permanent) == (429, False)
    assert err.retry_after_s is not None and 55 < err.retry_after_s <= 61
    assert "Rate limit reached" in err.message
    assert [(model, a.status) for model, a, _ in seen] == [(MODEL, 200)] * 2 + [(MODEL, 429)]
    assert seen[-1][2] is not None and seen[-1][2].remaining_requests == 0
    assert sim.stats().max_requests_60s == 3


# --- secrets -------------------------------------------------------------------------


def test_the_api_key_never_appears_in_logs_errors_or_outcomes(
    config: Config,
    sim: Simulator,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    captured = logging.getLogger(provider_module.logger.name)
    records: list[str] = []
    handler = logging.Handler()
    handler.setFormatter(LambdaPowertoolsFormatter())
    handler.emit = lambda record: records.append(handler.format(record))  # type: ignore[method-assign]
    captured.addHandler(handler)
    try:
        with caplog.at_level(logging.DEBUG):
            cfg = _config(config, sim, max_attempts=3)
            sim.inject("500", "503")
            completion = _call(cfg, _body())
            sim.inject("reset")
            unread = _fails(cfg, _body())
            sim.inject("503", "503", "503")
            exhausted = _fails(cfg, _body())
            # The simulator echoes an invalid role: a provider message quoting the key.
            echoed = _fails(cfg, _body(messages=[{"role": KEY, "content": "hi"}]))
    finally:
        captured.removeHandler(handler)
    out, err = capsys.readouterr()
    assert any("retrying" in r for r in records)  # the retries were logged
    assert "[redacted]" in echoed.message
    texts = [caplog.text, out, err, *records, completion.model_dump_json()]
    for failure in (exhausted, echoed, unread):
        texts += [str(failure), repr(failure), failure.message]
        texts += [a.model_dump_json() for a in failure.attempts]
    for text in texts:
        assert KEY not in text


# --- the simulator on its own --------------------------------------------------------


def test_simulator_models_auth_cache_hits_duplicates_and_outage(sim: Simulator) -> None:
    auth = {"authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=sim.base_url, headers=auth) as http:
        ids = [m["id"] for m in http.get("/models").json()["data"]]
        assert MODEL in ids and "gpt-4.1" in ids
        anonymous = httpx.post(sim.base_url + "/chat/completions", json=_body())
        assert anonymous.status_code == 401
        assert set(anonymous.json()["error"]) == {"message", "type", "param", "code"}
        first = http.post("/chat/completions", json=_body("first")).json()["usage"]
        again = http.post("/chat/completions", json=_body("second")).json()["usage"]
        assert first["prompt_tokens_details"]["cached_tokens"] == 0
        system_prefix = 3 + 4 + count_tokens(SYSTEM)
        assert again["prompt_tokens_details"]["cached_tokens"] == system_prefix
        assert again["prompt_cache_hit_tokens"] == system_prefix
        assert again["prompt_cache_miss_tokens"] == again["prompt_tokens"] - system_prefix
        http.post("/chat/completions", json=_body("first", stream=True)).raise_for_status()
        stats = http.get(sim.url + "/stats").json()
        assert (stats["completions"], stats["distinct_requests"], stats["duplicates"]) == (3, 2, 1)
        # the repeat of "first" is cached whole, "second" only up to the system prompt
        assert stats["cached_tokens"] == system_prefix + first["prompt_tokens"]
        http.post(sim.url + "/admin/outage", json={"seconds": 30}).raise_for_status()
        assert http.post("/chat/completions", json=_body()).status_code == 503
        http.post(sim.url + "/admin/reset").raise_for_status()
        assert http.post("/chat/completions", json=_body()).status_code == 200
        changed = http.post(sim.url + "/admin/settings", json={"rpm": 1}).json()
        assert changed["rpm"] == 1 and "api_key" not in changed
        assert http.post("/chat/completions", json=_body()).status_code == 429
        assert http.get(sim.url + "/stats").json()["by_status"] == {"200": 1, "429": 1}


def test_simulator_answers_an_uncapped_request_at_length_and_honours_either_cap(
    sim: Simulator,
) -> None:
    """Like a real provider: no cap sent, the model's own limit applies (an open question is
    answered at length); max_tokens and max_completion_tokens both cut the answer."""
    sim.configure(answer_tokens=100_000, open_answer_tokens=3000)
    auth = {"authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=sim.base_url, headers=auth) as http:
        uncapped = _body()
        del uncapped["max_tokens"]
        usage = http.post("/chat/completions", json=uncapped).json()["usage"]
        assert usage["completion_tokens"] == 3000
        for cap in ("max_tokens", "max_completion_tokens"):
            body = _body() | {"max_tokens": None, cap: 10}
            reply = http.post("/chat/completions", json=body).json()
            assert reply["usage"]["completion_tokens"] == 10, cap
            assert reply["choices"][0]["finish_reason"] == "length"
    assert sim.stats().completion_tokens == 3020


def test_simulator_refuses_max_tokens_for_a_reasoning_model(sim: Simulator) -> None:
    sim.configure(models=["o4-mini", "o4-mini-2025-04-16"])
    auth = {"authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=sim.base_url, headers=auth) as http:
        for model in ("o4-mini", "o4-mini-2025-04-16"):
            refused = http.post("/chat/completions", json=_body(model=model))
            assert refused.status_code == 400
            error = refused.json()["error"]
            assert (error["param"], error["code"]) == ("max_tokens", "unsupported_parameter")
            assert "Use 'max_completion_tokens' instead" in error["message"]
            body = _body(model=model, max_completion_tokens=64) | {"max_tokens": None}
            assert http.post("/chat/completions", json=body).status_code == 200
        # a model of another family takes max_tokens
        assert http.post("/chat/completions", json=_body()).status_code == 200


def test_simulator_bills_every_choice_and_counts_tools_as_prompt(
    config: Config, sim: Simulator
) -> None:
    tools = [{"type": "function", "function": {"name": "f", "description": "look it up"}}]
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    auth = {"authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=sim.base_url, headers=auth) as http:
        one = http.post("/chat/completions", json=_body("q")).json()
        sim.reset()
        three = http.post("/chat/completions", json=_body("q", n=3)).json()
        stats = sim.stats()
        tooled = http.post(
            "/chat/completions", json=_body("q", tools=tools, response_format=schema)
        ).json()
    assert [c["index"] for c in three["choices"]] == [0, 1, 2]
    assert len({c["message"]["content"] for c in three["choices"]}) == 3
    assert three["choices"][0] == one["choices"][0]
    assert three["usage"]["completion_tokens"] == 3 * one["usage"]["completion_tokens"]
    assert three["usage"]["prompt_tokens"] == one["usage"]["prompt_tokens"]  # billed once
    assert stats.completion_tokens == three["usage"]["completion_tokens"]
    fields = count_tokens(json.dumps(tools)) + 12 + 8 + count_tokens(json.dumps(schema)) + 3
    assert tooled["usage"]["prompt_tokens"] == one["usage"]["prompt_tokens"] + fields
    # streamed, the choices arrive by index and the client assembles each
    streamed = _call(_config(config, sim), _body("q", n=3, stream=True))
    assert [c["message"]["content"] for c in streamed.body["choices"]] == [
        c["message"]["content"] for c in three["choices"]
    ]
    assert streamed.usage.completion_tokens == three["usage"]["completion_tokens"]


def test_simulator_tpm_limit_and_window_stats(sim: Simulator) -> None:
    sim.configure(tpm=120)
    auth = {"authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=sim.base_url, headers=auth) as http:
        statuses = [
            http.post("/chat/completions", json=_body(str(i))).status_code for i in range(4)
        ]
        limited = http.post("/chat/completions", json=_body("more"))
    assert statuses[0] == 200 and 429 in statuses
    assert limited.status_code == 429
    assert limited.json()["error"]["type"] == "tokens"
    assert int(limited.headers["retry-after"]) >= 1
    assert 0 < int(limited.headers["retry-after-ms"]) <= 60_000
    assert limited.headers["x-ratelimit-limit-tokens"] == "120"
    stats = sim.stats()
    assert stats.max_tokens_60s <= 120
    assert stats.max_requests_60s == 5


# --- header parsing and backoff ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("6m0s", 360.0), ("1.5s", 1.5), ("250ms", 0.25), ("1h2m3s", 3723.0), ("0.5", 0.5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "5x", "-1", "1s2"])
def test_bad_durations(text: str) -> None:
    assert parse_duration(text) is None


def test_retry_after_as_an_http_date() -> None:
    now = dt.datetime(2025, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
    headers = {"retry-after": "Wed, 01 Jan 2025 12:00:07 GMT"}
    assert parse_retry_after(headers, now) == 7
    assert parse_retry_after({"retry-after": "junk"}, now) is None
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}, now) == 1.5


def test_backoff_is_full_jitter_under_a_cap() -> None:
    retries = Retries(base_s=0.5, max_backoff_s=4)
    rng = random.Random(1)
    for retry, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (10, 4.0)):
        delays = [backoff_s(retries, retry, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8
