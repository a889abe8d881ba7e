"""``core/sizing.py``: the worker's concurrency for ``scale.target_jobs_per_s``, and
``core/scale.py``'s ceilings."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from chatbatch.core.config import Config, Priority
from chatbatch.core.scale import ITEM_WCU_S, ceilings, deployment_ceiling, plan
from chatbatch.core.sizing import (
    CONCURRENCY_HEADROOM,
    INVOCATION_OVERHEAD_S,
    LAMBDA_ACCOUNT_CONCURRENCY,
    MAPPING_MAX,
    RESUME_INVOCATIONS,
    UNRESERVED_MIN,
    worker_sizing,
)


def scaled(config: Config, target: float | None, answer_s: float = 5.0) -> Config:
    """The config sized for ``target`` at batches of 10 (the figures below are for it)."""
    scale = config.scale.model_copy(update={"target_jobs_per_s": target, "answer_s": answer_s})
    worker = config.worker.model_copy(update={"batch_size": 10})
    return config.model_copy(update={"scale": scale, "worker": worker})


def test_without_a_target_nothing_is_raised_or_reserved(config: Config) -> None:
    got = worker_sizing(config)
    assert got.mappings == {p: config.priorities[p].max_concurrency for p in Priority}
    assert got.reserved is None and got.concurrency is None and got.quotas == ()


def test_500_jobs_per_s_of_5_s_answers(config: Config) -> None:
    got = worker_sizing(scaled(config, 500))
    # 50 invocations/s of 5.5 s each: 275 running, twice over
    assert got.concurrency == 550
    assert got.mappings == dict.fromkeys(Priority, 550)
    assert got.reserved == 4 * 550 + RESUME_INVOCATIONS
    lam = got.quotas[0]
    assert lam.needed == got.reserved + UNRESERVED_MIN and lam.raise_needed
    assert got.one_priority_ceiling == 550 * 10 / 5.5


@settings(max_examples=200, deadline=None)
@given(
    target=st.floats(min_value=0.1, max_value=50_000),
    answer_s=st.floats(min_value=0.05, max_value=120),
    batch=st.integers(min_value=1, max_value=10),
    configured=st.lists(st.integers(min_value=2, max_value=1000), min_size=4, max_size=4),
)
def test_the_target_only_raises_within_lambdas_range_and_reserves_enough(
    config: Config, target: float, answer_s: float, batch: int, configured: list[int]
) -> None:
    priorities = {
        p: s.model_copy(update={"max_concurrency": c})
        for (p, s), c in zip(config.priorities.items(), configured, strict=True)
    }
    worker = config.worker.model_copy(update={"batch_size": batch})
    cfg = scaled(config, target, answer_s).model_copy(
        update={"priorities": priorities, "worker": worker}
    )
    got = worker_sizing(cfg)
    assert got.concurrency is not None and got.reserved is not None
    for p in Priority:
        assert 2 <= got.mappings[p] <= MAPPING_MAX
        assert got.mappings[p] >= cfg.priorities[p].max_concurrency  # only raised
        # each priority alone takes the target at twice the typical answer time, unless
        # Lambda's 1,000 per mapping stops it first
        needed = target / batch * (answer_s + INVOCATION_OVERHEAD_S) * CONCURRENCY_HEADROOM
        assert got.mappings[p] >= min(needed, MAPPING_MAX) - 1e-6
    # AWS: reserved concurrency >= the sum of the SQS mappings' maximum concurrency
    assert got.reserved >= sum(got.mappings.values())
    assert got.ceiling == got.jobs_per_s(sum(got.mappings.values()))


def test_one_priority_stops_below_2_000_jobs_per_s_of_5_s_answers(config: Config) -> None:
    """A mapping takes at most 1,000 invocations: 10 jobs each per 5.5 s is 1,818 jobs/s,
    the deployment's ceiling for a file of one priority."""
    cfg = scaled(config, 2_000)
    rows = ceilings(cfg, plan(cfg))
    lowest = deployment_ceiling(rows)
    assert lowest.limit == "Lambda, one priority alone"
    assert round(lowest.jobs_per_s) == 1_818
    faster = scaled(config, 2_000, answer_s=4.0)  # 4.5 s invocations: 2,222 jobs/s
    assert deployment_ceiling(ceilings(faster, plan(faster))).jobs_per_s >= 2_000


def test_ceilings_follow_the_shards(config: Config) -> None:
    base = scaled(config, None)
    one = {c.limit: c.jobs_per_s for c in ceilings(base, plan(base))}
    cfg = scaled(config, 10_000)
    many = {c.limit: c.jobs_per_s for c in ceilings(cfg, plan(cfg))}
    shards = plan(cfg).ledger_shards
    assert shards > 1
    assert many["day's budget ledger"] == shards * one["day's budget ledger"]
    assert one["day's budget ledger"] == ITEM_WCU_S / (4 / base.worker.batch_size)
    # without a target the worker shares the account's default 1,000 with its 40 invocations
    assert one["Lambda, every priority busy"] == (
        min(40, LAMBDA_ACCOUNT_CONCURRENCY) * base.worker.batch_size / 5.5
    )


def test_a_limiter_binds_only_where_its_model_is_faster(config: Config) -> None:
    rows = [c for c in ceilings(config, plan(config)) if c.limit.startswith("limiter ")]
    assert rows and not any(c.binds for c in rows)  # every shipped model's rpm is far lower
