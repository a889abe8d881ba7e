"""A worker that wakes late for the send time the limiter spaced its job to (a stalled
process, a slow write before the send) takes capacity anew instead of sending late
(``pipeline.on_time``): a late send would land between the sends booked after it, where
a provider that enforces its limit over short periods refuses it, and in a later minute
than the limiter counted it in.

Through the local runtime at 60 requests/min (a send a second): every third wake is
stalled by 1.3 s. With the guard no two requests reach the provider closer than the
spacing allows, every job is answered once, and the re-booked sends' first capacity went
back to the limiter; without it (the same run, the guard off) a stalled send lands 0.3 s
after the next one.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime
from chatbatch.local.simulator import SimulatorSettings
from chatbatch.state.limiter.lease import Lease
from chatbatch.state.limiter.limiter import RateLimiter
from chatbatch.worker import pipeline

RPM = 60  # a send a second: a 1.3 s stall lands 0.3 s after the next booked send
JOBS = 8
STALL_S = 1.3


@dataclass
class Run:
    succeeded: int
    requests: int
    gaps: list[float]  # between successive requests reaching the provider, seconds
    stalls: int
    used_requests: int  # the limiter's minute after the run: requests granted, net


@pytest.fixture
def stalled(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Every third wake for a send time comes ``STALL_S`` late; yields the stall count."""
    wakes, stalls = itertools.count(), [0]
    original = pipeline.send_at

    async def late(lease: Lease, index: int) -> None:
        await original(lease, index)
        if next(wakes) % 3 == 0:
            stalls[0] += 1
            await asyncio.sleep(STALL_S)

    monkeypatch.setattr(pipeline, "send_at", late)
    yield stalls


def run(tmp_path: Path, stalls: list[int]) -> Run:
    lines = [json.dumps({"custom_id": f"j{i}", "prompt": f"question {i}"}) for i in range(JOBS)]
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    sim = SimulatorSettings(rpm=RPM, latency_ms=50)
    with LocalRuntime(LocalOptions(simulator=sim, rpm=RPM, timeout_s=120)) as rt:
        summary = rt.run(path, tmp_path / "out")
        assert rt.simulator is not None
        received = sorted(rt.simulator.stats().received_s)
        limiter = RateLimiter(boto3.client("dynamodb"), rt.resources.table, rt.config)
        used = limiter.status(rt.config.defaults.model).used_requests
    gaps = [b - a for a, b in itertools.pairwise(received)]
    return Run(summary.succeeded, len(received), gaps, stalls[0], used)


def test_a_late_wake_takes_capacity_anew(tmp_path: Path, stalled: list[int]) -> None:
    got = run(tmp_path, stalled)
    assert (got.succeeded, got.requests) == (JOBS, JOBS)  # each answered once, no 429
    assert got.stalls >= JOBS // 3
    assert min(got.gaps) > 0.6, got.gaps  # spaced a second apart, give or take a busy CI
    assert got.used_requests == JOBS  # the late sends' first grants went back


def test_without_the_guard_a_late_send_lands_among_the_next(
    tmp_path: Path, stalled: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scenario bites: the same run with the guard off bunches two sends."""
    monkeypatch.setattr(pipeline, "MAX_LATE_S", float("inf"))
    got = run(tmp_path, stalled)
    assert got.succeeded == JOBS
    assert min(got.gaps) < 0.6, got.gaps
