"""A batch's counters spread over shard items (``scale.target_jobs_per_s``) read back as
the totals one item would hold: through ``get``, ``prefetch`` and ``list_all``; the shard
count is the registration's; a sharded read that looks complete is confirmed by a second
read that agrees; the hot-items bench classifies the shard items."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench._item_kinds import kind_of
from chatbatch.core.config import Config
from chatbatch.core.resources import TABLE_PK, TABLE_SK
from chatbatch.local.aws import create_resources, moto_in_process
from chatbatch.state.batches import (
    COUNTERS,
    Batches,
    BatchInfo,
    JobState,
    batch_key,
    counter_key,
    pick_shard,
)

SHARDS = 4
COUNTED = ("succeeded", "failed", "deferred", "cost_nanos", "retried")
_ids = itertools.count()


class Tables:
    """One moto table, seen by an unsharded and a sharded ``Batches``."""

    def __init__(self, config: Config) -> None:
        ddb = boto3.client("dynamodb")
        self.ddb, self.table = ddb, create_resources(config).table
        self.plain = Batches(ddb, self.table)
        self.sharded = Batches(ddb, self.table, counter_shards=SHARDS)

    def register(self, batches: Batches, batch_id: str, total: int = 10**6) -> None:
        batches.register(batch_id, total=total, priority="normal", checksum="c", registrant="me")

    def item(self, key: dict[str, Any]) -> dict[str, Any] | None:
        return self.ddb.get_item(TableName=self.table, Key=key, ConsistentRead=True).get("Item")


@pytest.fixture(scope="module")
def tables(config: Config) -> Iterator[Tables]:
    with moto_in_process():
        yield Tables(config)


def counts(info: BatchInfo | None) -> dict[str, int]:
    assert info is not None
    return {name: getattr(info, name) for name in COUNTERS}


# one ADD: (counter, delta, shard: None is the meta item, as before the batch's registration)
adds = st.lists(
    st.tuples(
        st.sampled_from(COUNTED),
        st.integers(-5, 50).filter(bool),  # a zero adds nothing: no item to commit
        st.one_of(st.none(), st.integers(0, SHARDS - 1)),
    ),
    max_size=12,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(adds)
def test_adds_spread_over_shards_read_back_as_one_items_totals(
    tables: Tables, additions: list[tuple[str, int, int | None]]
) -> None:
    one, spread = f"one-{next(_ids)}", f"spread-{next(_ids)}"
    tables.register(tables.plain, one)
    tables.register(tables.sharded, spread)
    for name, delta, shard in additions:
        tables.plain.commit(tables.plain.count_items(one, {name: delta}))
        tables.sharded.commit(tables.sharded.count_items(spread, {name: delta}, shard))
    expected = counts(tables.plain.get(one))
    assert counts(tables.sharded.get(spread)) == expected
    assert counts(tables.plain.get(spread)) == expected  # a reader's config is no matter
    _, infos = tables.plain.prefetch([(spread, "x"), (one, "y")])
    assert counts(infos[spread]) == counts(infos[one]) == expected
    listed = {b.batch_id: b for b in tables.sharded.list_all()}
    assert counts(listed[spread]) == counts(listed[one]) == expected
    assert listed[spread].counter_shards == SHARDS and listed[one].counter_shards == 1


def test_the_shard_count_is_the_registrations(tables: Tables) -> None:
    """Unsharded: no attribute, the meta item counts as before. Sharded: kept when the
    batch is registered again under another config; a batch registered unsharded, then
    again sharded, keeps the counts its meta item holds."""
    tables.register(tables.plain, "flat")
    meta = tables.item(batch_key("flat"))
    assert meta is not None and "counter_shards" not in meta
    assert tables.plain.transition("flat", "a", prev=JobState.new, new=JobState.succeeded)
    assert tables.item(batch_key("flat"))["succeeded"] == {"N": "1"}  # type: ignore[index]

    tables.register(tables.sharded, "wide")
    tables.register(tables.plain, "wide")
    assert tables.plain.get("wide").counter_shards == SHARDS  # type: ignore[union-attr]
    assert tables.plain.transition("wide", "a", prev=JobState.new, new=JobState.succeeded, shard=2)
    assert tables.item(batch_key("wide")).get("succeeded") is None  # type: ignore[union-attr]
    shard = tables.item(counter_key("wide", 2))
    assert shard is not None and shard["succeeded"] == {"N": "1"} and shard["writes"] == {"N": "1"}

    tables.register(tables.sharded, "flat")  # registered unsharded first: its counts stay
    assert tables.sharded.transition("flat", "b", prev=JobState.new, new=JobState.failed, shard=1)
    info = tables.sharded.get("flat")
    assert info is not None and (info.succeeded, info.failed) == (1, 1)


def test_a_sharded_batch_that_reads_complete_is_read_again_until_two_reads_agree(
    tables: Tables, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two jobs: ``a`` failed on shard 0, ``b`` succeeded on shard 1. A ``retry`` of ``a``
    (shard 0) lands just after a first read: that read holds ``a`` failed and ``b``
    succeeded, which looks complete though the batch is not (``a`` is running again)."""
    tables.register(tables.sharded, "race", total=2)
    sharded = tables.sharded
    assert sharded.transition("race", "a", prev=JobState.new, new=JobState.failed, shard=0)
    assert sharded.transition("race", "b", prev=JobState.new, new=JobState.succeeded, shard=1)
    [a] = sharded.jobs("race", ["a"])
    real = sharded._get_many
    reads: list[int] = []

    def read_then_retry(keys: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        found = real(keys)
        reads.append(len(keys))
        if len(reads) == 1:
            assert sharded.retry("race", a, shard=0)
        return found

    monkeypatch.setattr(sharded, "_get_many", read_then_retry)
    info = sharded.get("race")
    assert info is not None and not info.complete, info
    assert (info.failed, info.succeeded, info.retried) == (0, 1, 1)
    assert len(reads) == 2
    monkeypatch.undo()
    assert sharded.transition("race", "a", prev=JobState.retrying, new=JobState.succeeded, shard=3)
    done = sharded.get("race")
    assert done is not None and done.complete and done.succeeded == 2


def test_pick_shard_is_the_meta_item_unsharded_and_any_shard_else() -> None:
    assert pick_shard(1) is None
    assert {pick_shard(3) for _ in range(200)} == {0, 1, 2}


def test_the_hot_items_bench_counts_shards_with_the_batch_counters() -> None:
    meta, shard = batch_key("b1"), counter_key("b1", 3)
    kinds = [kind_of(key[TABLE_PK]["S"], key[TABLE_SK]["S"]) for key in (meta, shard)]
    assert kinds[0] is not None and kinds[0] is kinds[1]
    assert kinds[0].name == "batch counters + completion"
    assert kinds[0].batch_of("batch#b1#c3") == kinds[0].batch_of("batch#b1") == "b1"
