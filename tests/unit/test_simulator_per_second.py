"""The simulator's provider that enforces its minute's limit per second as well (OpenAI:
600/min may be enforced as 10 per second): a burst over the second's share is refused with
the real API's 429, the same requests spread over the second are not."""

from __future__ import annotations

import json
from typing import Any

from chatbatch.local.simulator import Engine, SimulatorSettings, parse_args
from chatbatch.local.simulator.replies import Reply


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def engine(**settings: Any) -> tuple[Engine, Clock]:
    clock = Clock()
    sim = SimulatorSettings(models=["m"], config_models=False, **settings)
    return Engine(sim, clock=clock), clock


def ask(sim: Engine, words: int = 2) -> Reply:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi " * words}]}
    body["max_tokens"] = 8
    return sim.handle("POST", "/v1/chat/completions", {}, json.dumps(body).encode())


def test_a_burst_over_the_seconds_share_is_refused_like_the_real_api():
    sim, _ = engine(rpm=600, per_second=True)
    statuses = [ask(sim).status for _ in range(12)]
    assert statuses == [200] * 10 + [429] * 2  # 600/min: 10 in any second
    refused = ask(sim)
    error = json.loads(refused.body)["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
    assert "on requests per second (RPS): Limit 10, Used 10, Requested 1" in error["message"]
    assert refused.headers["retry-after-ms"] == "1000"  # the second's first request leaves
    # the minute's headers, as the real API reports them: room left in the minute
    assert refused.headers["x-ratelimit-remaining-requests"] == "590"
    stats = sim.stats()
    assert stats.rate_limited == {"requests_per_second": 3}
    assert (stats.max_requests_1s, stats.max_requests_60s) == (13, 13)


def test_the_same_requests_spread_over_each_second_pass():
    sim, clock = engine(rpm=600, per_second=True)
    for _ in range(30):  # 10 per second, one every 100 ms: 3 seconds at the share
        assert ask(sim).status == 200
        clock.now += 0.1
    stats = sim.stats()
    assert stats.by_status == {"200": 30} and stats.rate_limited == {}
    assert stats.max_requests_1s == 10
    assert stats.received_s[:2] == [0.0, 0.1]


def test_without_per_second_only_the_minute_binds():
    sim, _ = engine(rpm=600)
    assert all(ask(sim).status == 200 for _ in range(30))
    sim, _ = engine(rpm=20)
    statuses = [ask(sim).status for _ in range(21)]
    assert statuses[-1] == 429 and sim.stats().rate_limited == {"requests_per_min": 1}
    assert "per min (RPM)" in json.loads(ask(sim).body)["error"]["message"]


def test_tokens_are_enforced_per_second_too_and_a_big_request_fits_an_empty_second():
    sim, clock = engine(tpm=6000, per_second=True)  # 100 tokens in any second
    assert ask(sim, words=10).status == 200  # ~30 tokens
    assert ask(sim, words=10).status == 200
    assert ask(sim, words=60).status == 429  # over the second's share with the others
    assert sim.stats().rate_limited == {"tokens_per_second": 1}
    clock.now += 1.0
    assert ask(sim, words=150).status == 200  # bigger than a second's share: an empty one


def test_the_command_line_sets_it():
    settings, _, _ = parse_args(["--rpm", "600", "--per-second"])
    assert settings.per_second and settings.rpm == 600
    assert not parse_args([])[0].per_second
