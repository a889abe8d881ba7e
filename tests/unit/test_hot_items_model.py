"""The hot-item model of ``bench.bench_hot_items`` on writes made up here: DynamoDB's units
(rounded up per item, doubled in a transaction), kinds from the state code's keys, the
hottest item per job sharing it, the ceiling, and writes no kind claims kept aside."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench._capacity import Write
from bench._common import ROOT
from bench._item_kinds import Scope, kind_of
from bench.bench_hot_items import ITEM_WCU_S, hot_model, scaled_config
from chatbatch.core.config import load_config
from chatbatch.core.resources import TABLE_PK, TABLE_SK
from chatbatch.core.scale import plan
from chatbatch.state.batches import batch_key, job_key
from chatbatch.state.budget.ledger import day_key, open_key
from chatbatch.state.item_size import item_size, units, value_size
from chatbatch.state.limiter.item import key as limiter_key


def keyed(key: dict[str, dict[str, str]]) -> tuple[str, str]:
    return key[TABLE_PK]["S"], key[TABLE_SK]["S"]


def write(key: tuple[str, str], action: str, size: int = 100, at: float = 0.0) -> Write:
    return Write(at, *key, action, size, True)


def test_units_round_up_per_item_and_double_in_a_transaction() -> None:
    assert item_size({"pk": {"S": "ab"}, "n": {"N": "12345"}}) == 2 + 2 + 1 + 4
    assert value_size({"M": {"a": {"BOOL": True}}}) == 3 + 1 + 1 + 1
    assert units(1024, 1024) == 1 and units(1025, 1024) == 2 and units(0, 1024) == 1
    plain, txn = write(("a", "b"), "UpdateItem", 1025), write(("a", "b"), "Update", 1025)
    assert (plain.wru, txn.wru) == (2, 4)
    assert write(("a", "b"), "Delete", 10).wru == 2


def test_kinds_come_from_the_state_codes_keys() -> None:
    day = kind_of(*keyed(day_key("2026-01-02")))
    assert day is not None and day.name == "day's budget ledger"
    assert day.scope is Scope.DEPLOYMENT
    job = kind_of(*keyed(job_key("b1", "task 1")))
    assert job is not None and job.name == "job state" and job.scope is Scope.JOB
    batch = kind_of(*keyed(batch_key("b1")))
    assert batch is not None and batch.batch_of("batch#b1") == "b1"
    shard = kind_of(*keyed(limiter_key("gpt-4.1", 3)))
    assert shard is not None and shard.name == "limiter shard"
    assert kind_of("nobody#builds", "this") is None


def test_the_hottest_item_per_job_sharing_it_sets_the_ceiling() -> None:
    day, big, small = day_key("d"), batch_key("big"), batch_key("small")
    writes = [write(keyed(day), "Update", at=i * 0.1) for i in range(30)]  # 2 WRU each
    writes += [write(keyed(big), "Update") for _ in range(20)]  # 40 WRU / 10 jobs
    writes += [write(keyed(small), "UpdateItem") for _ in range(11)]  # 11 WRU / 2 jobs
    writes += [write(keyed(open_key("d", f"j{i}")), "Put") for i in range(12)]
    writes.append(write(("stray#item", "x"), "PutItem"))
    model = hot_model(writes, jobs=12, batch_jobs={"big": 10, "small": 2})
    ledger = model.row("day's budget ledger")
    assert ledger.wcu_per_job == pytest.approx(60 / 12)
    assert ledger.ceiling == pytest.approx(ITEM_WCU_S / 5)
    assert ledger.peak_writes_s == 10 and ledger.peak_wcu_s == 20
    counters = model.row("batch counters + completion")
    assert counters.hottest == keyed(small) and counters.wcu_per_job == pytest.approx(5.5)
    assert model.limiting is counters
    markers = model.row("open marker")
    assert markers.items == 12 and math.isinf(markers.ceiling)
    (partition,) = model.partitions
    assert partition.hottest[0] == "budget#open#d" and partition.wcu_per_job == 2.0
    assert [(w.pk, w.sk) for w in model.unclassified] == [("stray#item", "x")]
    assert "batch counters" in model.verdict()


def test_the_scaled_run_plans_the_shipped_config_for_the_target(tmp_path: Path) -> None:
    path = scaled_config(tmp_path, 8_000)
    scaled = load_config(path)
    assert scaled.scale.target_jobs_per_s == 8_000
    assert plan(scaled).ledger_shards == 3  # what the run's workers shard by
    shipped = load_config(ROOT / "chatbatch.toml")
    assert scaled.model_dump(exclude={"scale"}) == shipped.model_dump(exclude={"scale"})
