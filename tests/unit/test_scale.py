"""``core/scale.py``: shard counts from ``scale.target_jobs_per_s``."""

from __future__ import annotations

from chatbatch.core.config import Config
from chatbatch.core.scale import (
    HEADROOM,
    IMBALANCE,
    ITEM_WCU_S,
    LIMITER_WCU_PER_JOB,
    PER_INVOCATION_WCU,
    plan,
    shards_for,
)


def scaled(config: Config, target: float | None) -> Config:
    """The config planned for ``target`` at batches of 10 (the figures below are for it)."""
    return config.model_copy(
        update={
            "scale": config.scale.model_copy(update={"target_jobs_per_s": target}),
            "worker": config.worker.model_copy(update={"batch_size": 10}),
        }
    )


def test_without_a_target_every_hot_item_is_one(config: Config) -> None:
    got = plan(config)
    assert (got.ledger_shards, got.marker_shards, got.counter_shards) == (1, 1, 1)
    assert {got.limiter(m) for m in config.models} == {1}


def test_shards_keep_each_item_at_half_its_limit_at_the_target(config: Config) -> None:
    for target in (100, 1_000, 2_000, 10_000):
        cfg = scaled(config, target)
        got = plan(cfg)
        per_job = PER_INVOCATION_WCU / cfg.worker.batch_size * IMBALANCE  # the busiest
        assert target * per_job / got.ledger_shards <= ITEM_WCU_S * HEADROOM
        # and not more shards than that needs
        fewer = max(got.ledger_shards - 1, 1)
        assert got.ledger_shards == 1 or target * per_job / fewer > ITEM_WCU_S * HEADROOM
    assert plan(scaled(config, 2_000)).ledger_shards == 3
    assert shards_for(0.001, 1) == 1


def test_a_model_limiter_is_sharded_for_what_its_limit_lets_through(config: Config) -> None:
    fast = scaled(config, 10_000)
    for name, model in config.models.items():
        rate = min(10_000, model.rpm / 60)
        assert plan(fast).limiter(name) == shards_for(rate, LIMITER_WCU_PER_JOB)
