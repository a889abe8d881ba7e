"""The breaker item: opened once (``since`` kept), one prober per period, closed by hand."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from chatbatch.state.breaker import Breakers
from tests.unit.conftest import Dynamo


def test_one_prober_per_period_and_since_kept(dynamo: Dynamo) -> None:
    now = [1000.0]
    workers = [
        Breakers(dynamo.client, dynamo.table, clock=lambda: now[0], probe_every_s=60)
        for _ in range(3)
    ]
    first = workers[0].open("m", "auth", status=401, code="invalid_api_key", message="bad key")
    assert [w.claim_probe("m") for w in workers] == [False] * 3  # no probe in the first period
    now[0] += 30
    again = workers[1].open("m", "quota", status=429, code=None, message="no credit")
    assert again.since == first.since == 1000.0 and again.reason == "quota" and again.code is None
    now[0] += 31
    assert [w.claim_probe("m") for w in workers] == [True, False, False]
    now[0] += 61
    assert sorted(w.claim_probe("m") for w in workers) == [False, False, True]
    assert [b.model for b in workers[2].list_open()] == ["m"]
    assert workers[2].close("m") and not workers[2].close("m")
    assert workers[0].get("m", fresh=True) is None and workers[0].list_open() == []
    assert not workers[0].claim_probe("m"), "a closed breaker has no probe"


def test_the_read_is_cached_per_worker(dynamo: Dynamo) -> None:
    now = [0.0]
    reader = Breakers(dynamo.client, dynamo.table, clock=lambda: now[0], cache_s=5)
    writer = Breakers(dynamo.client, dynamo.table, clock=lambda: now[0])
    assert reader.get("m") is None
    writer.open("m", "auth", status=401, code=None, message="x")
    assert reader.get("m") is None  # cached
    now[0] += 5.1
    breaker = reader.get("m")
    assert breaker is not None and breaker.status == 401 and breaker.message == "x"
    assert reader.cached("m") == (True, breaker)  # what the worker's jobs ask first
    now[0] += 5.1
    assert reader.cached("m") == (False, None)  # stale: they read


def test_jobs_that_find_the_cache_stale_together_read_once(dynamo: Dynamo) -> None:
    """An invocation's 40 jobs ask at once as it starts: one GetItem, not 40."""
    reader = Breakers(dynamo.client, dynamo.table, cache_s=5)
    reads = []

    def slow_read(**kwargs: object) -> None:  # the others ask while it is under way
        reads.append(kwargs)
        time.sleep(0.05)

    dynamo.client.meta.events.register("before-call.dynamodb.GetItem", slow_read)
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(reader.get, ["m"] * 40)) == [None] * 40
    assert len(reads) == 1
