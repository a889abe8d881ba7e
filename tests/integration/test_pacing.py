"""A worker that wakes late for the send times the limiter spaced its jobs to (a stalled
process) does not send them in a bunch: the pacer (``state/limiter/pacer.py``) holds a late
send until the process's sends leave room for it, so a provider that enforces its limit
per second refuses none of them.

Through the local runtime at 57 requests/min against a simulator that enforces one request
per rolling second: every third wake for a send time comes 1.3 s late, so without
the pacer the late send lands 0.3 s before or after the next one (the same run with the
pacer off shows it: the provider refuses).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime
from chatbatch.local.simulator import SimulatorSettings
from chatbatch.state.limiter.pacer import Send
from chatbatch.worker import pipeline

RPM = 60  # one request a second is all the provider takes
# The pipeline's limit, set a little under the provider's as a key's owner would: its sends
# 1.05 s apart leave 50 ms for the time a request takes from the pacer's write to the
# simulator's clock. At 60 (1.005 s apart) that was 5 ms, and a loaded CI machine (the
# simulator's thread waits for the GIL among 20 pollers and moto) once took more: one 429.
PIPELINE_RPM = 57
JOBS = 8
STALL_S = 1.3


@dataclass
class Run:
    succeeded: int
    refused: int  # 429s
    gaps: list[float]  # between successive requests reaching the provider, seconds
    stalls: int


@pytest.fixture
def stalled(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Every third wake for a send time comes ``STALL_S`` late; yields the stall count."""
    wakes, stalls = itertools.count(), [0]
    original = pipeline.wake_at

    async def late(when: float) -> None:
        await original(when)
        if next(wakes) % 3 == 0:
            stalls[0] += 1
            await asyncio.sleep(STALL_S)

    monkeypatch.setattr(pipeline, "wake_at", late)
    yield stalls


def run(tmp_path: Path, stalls: list[int]) -> Run:
    lines = [json.dumps({"custom_id": f"j{i}", "prompt": f"question {i}"}) for i in range(JOBS)]
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    sim = SimulatorSettings(rpm=RPM, per_second=True, latency_ms=50)
    with LocalRuntime(LocalOptions(simulator=sim, rpm=PIPELINE_RPM, timeout_s=120)) as rt:
        summary = rt.run(path, tmp_path / "out")
        assert rt.simulator is not None
        stats = rt.simulator.stats()
    received = sorted(stats.received_s)
    gaps = [b - a for a, b in itertools.pairwise(received)]
    return Run(summary.succeeded, stats.by_status.get("429", 0), gaps, stalls[0])


def test_late_wakes_are_sent_spaced(tmp_path: Path, stalled: list[int]) -> None:
    got = run(tmp_path, stalled)
    assert got.stalls >= JOBS // 3
    assert (got.succeeded, got.refused) == (JOBS, 0), got  # each answered, none refused
    assert min(got.gaps) > 0.8, got.gaps  # a second apart, give or take a busy CI


class _Off:
    def wait_s(self, *args: object) -> float:
        return 0.0

    def take(self, *args: object) -> Send:
        return Send(0.0)

    def written(self, *args: object) -> None:
        pass


def test_without_the_pacer_late_wakes_bunch(
    tmp_path: Path, stalled: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scenario bites: the same run with the pacer off sends two within a second,
    and the provider refuses."""
    monkeypatch.setattr(pipeline, "PACER", _Off())
    got = run(tmp_path, stalled)
    assert got.succeeded == JOBS  # retried after the 429s
    assert min(got.gaps) < 0.6, got.gaps
    assert got.refused > 0
