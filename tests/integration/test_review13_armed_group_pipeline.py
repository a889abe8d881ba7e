"""Review 13, end to end: an invocation's group of reservations written armed
(``reserve_many(armed_for=flush)``, d51d689) when the group's transaction committed but
its reply was lost."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ConnectionClosedError

from bench._common import write_config
from chatbatch.state.budget.budget import Budget
from tests.integration.test_pipeline import assert_costs_counted_once, runtime, write


def test_review13_a_lost_group_reply_books_no_call_that_never_went_out(
    tmp_path: Path, config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first invocation's ``reserve_many`` commits and then raises (its reply lost: a
    reset, a read timeout, retries run out). ``reserve_ahead`` takes that as nothing
    reserved and each job reserves alone, finding its own reservation (same owner). None
    of them has called: each must take it back and call once, at once, as when the group
    was written unarmed. Written armed, each is held off (``HeldElsewhere``, handed back
    ``elsewhere``) until ``worker.timeout_s`` after the group, then booked at its worst
    case as a call its dead worker sent (``_rebuy``) and called under a new reservation:
    estimated calls for calls never made, and every job waits out the timeout."""
    original = Budget._transact
    lost: list[int] = []
    lock = threading.Lock()

    def reply_lost(self: Budget, items: list[Any]) -> list[Any]:
        reasons = original(self, items)
        group = [i for i in items if "group#" in json.dumps(i.get("Put", {}).get("Item", {}))]
        with lock:
            if group and not reasons and not lost:  # the group's put committed: reply lost
                lost.append(len(items))
                raise ConnectionClosedError(endpoint_url="https://dynamodb.local")
        return reasons

    monkeypatch.setattr(Budget, "_transact", reply_lost)
    lines = [json.dumps({"custom_id": f"g{i}", "prompt": f"q{i}"}) for i in range(8)]
    cfg = write_config(tmp_path / "chatbatch.json", config, worker={"timeout_s": 30})
    with runtime(config_path=cfg, concurrency=2, timeout_s=180) as rt:
        assert rt.simulator is not None
        summary = rt.run(write(tmp_path, lines), tmp_path / "out")
        stats = rt.simulator.stats()
        assert_costs_counted_once(rt, tmp_path / "out", summary)
    assert lost and lost[0] >= 4, "a group committed with its reply lost"
    assert summary.succeeded == 8
    assert stats.requests == 8, "each job called once"
    assert summary.estimated_calls == 0, "no call booked that never went out"
    assert summary.wall_s < 25, "no job waited out worker.timeout_s for a call never sent"
