"""Batch counters and job states: each outcome counts exactly once, gauges go up and down."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest

from chatbatch.client.submit import checksum_batch_id
from chatbatch.core.config import Config
from chatbatch.local.aws import create_resources, moto_in_process
from chatbatch.state.batches import Batches, JobState, SubmittedFromAnotherFile


@pytest.fixture
def batches(config: Config) -> Iterator[Batches]:
    with moto_in_process():
        resources = create_resources(config)
        yield Batches(boto3.client("dynamodb"), resources.table)


def test_register_then_outcomes_move_counters_once(batches: Batches):
    batches.register(
        "b1", total=3, priority="high", checksum="abc", registrant="AIDAME", budget_nanos=5
    )
    assert batches.transition(
        "b1",
        "a",
        prev=JobState.new,
        new=JobState.succeeded,
        counters={"cost_nanos": 100, "prompt_tokens": 7},
    )
    # a redelivered message read the old state: its transition must not count again
    assert not batches.transition(
        "b1", "a", prev=JobState.new, new=JobState.succeeded, counters={"cost_nanos": 100}
    )
    assert batches.transition("b1", "b", prev=JobState.new, new=JobState.failed)
    info = batches.get("b1")
    assert info is not None
    assert (info.total, info.succeeded, info.failed, info.cost_nanos, info.prompt_tokens) == (
        3,
        1,
        1,
        100,
        7,
    )
    assert info.priority == "high" and info.budget_nanos == 5 and info.finished == 2
    batches.register(
        "b1", total=3, priority="high", checksum="abc", registrant="AIDAME"
    )  # re-submit keeps counts
    assert batches.get("b1").succeeded == 1  # type: ignore[union-attr]


def test_a_batch_id_registered_from_one_file_refuses_another(batches: Batches):
    """The checksum is part of the registering write: a second file under the same id
    is refused (also when two submits race), and the first file's registration stays."""
    batches.register("b9", total=2, priority="high", checksum="a" * 64, registrant="AIDAME")
    with pytest.raises(SubmittedFromAnotherFile) as caught:
        batches.register("b9", total=5, priority="low", checksum="b" * 64, registrant="AIDAME")
    assert str(caught.value) == (
        f"batch 'b9' was submitted from another file (checksum {'a' * 12}, "
        f"this file {'b' * 12}): choose another batch id"
    )
    info = batches.get("b9")
    assert info is not None and (info.total, info.checksum) == (2, "a" * 64)
    # a batch the workers made (jobs sent straight to a queue) has no checksum: it takes one
    assert batches.transition("straight", "x", prev=JobState.new, new=JobState.succeeded)
    batches.register("straight", total=1, priority="high", checksum="c" * 64, registrant="AIDAME")

    def register(i: int) -> bool:
        try:
            batches.register(
                "race", total=1, priority="high", checksum=f"{i:064d}", registrant="AIDAME"
            )
        except SubmittedFromAnotherFile:
            return False
        return True

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(register, range(8))) == 1


def test_gauges_follow_deferred_and_dead_lettered_jobs(batches: Batches):
    assert batches.transition("b2", "x", prev=JobState.new, new=JobState.deferred)
    assert batches.transition("b2", "x", prev=JobState.deferred, new=JobState.deferred)
    assert batches.get("b2").deferred == 1  # type: ignore[union-attr]
    assert batches.transition("b2", "x", prev=JobState.deferred, new=JobState.throttled)
    info = batches.get("b2")
    assert info is not None and (info.deferred, info.throttled) == (0, 1)
    assert batches.transition("b2", "x", prev=JobState.throttled, new=JobState.dead_lettered)
    info = batches.get("b2")
    assert info is not None and (info.deferred, info.dead_lettered) == (0, 1)
    assert batches.transition("b2", "x", prev=JobState.dead_lettered, new=JobState.succeeded)
    info = batches.get("b2")
    assert info is not None and (info.dead_lettered, info.succeeded) == (0, 1)
    states, infos = batches.prefetch([("b2", "x"), ("b2", "y")])
    assert states == {("b2", "x"): JobState.succeeded, ("b2", "y"): JobState.new}
    assert infos["b2"].succeeded == 1


def test_concurrent_duplicates_count_once(batches: Batches):
    def finish(_: int) -> bool:
        return batches.transition(
            "b3", "dup", prev=JobState.new, new=JobState.succeeded, counters={"cost_nanos": 10}
        )

    with ThreadPoolExecutor(8) as pool:
        wins = list(pool.map(finish, range(16)))
    assert wins.count(True) == 1
    info = batches.get("b3")
    assert info is not None and (info.succeeded, info.cost_nanos) == (1, 10)


def test_cancel_and_list(batches: Batches):
    batches.register("b4", total=1, priority="low", checksum="c", registrant="AIDAME")
    batches.cancel("b4")
    _, infos = batches.prefetch([("b4", "j")])
    assert infos["b4"].cancelled
    assert [b.batch_id for b in batches.list_all()] == ["b4"]


def test_default_batch_ids_are_stable_per_deployment_and_unguessable(config: Config):
    """Issue 20: a default batch id carries the deployment's random salt: the same file
    gets the same id again (re-submit, exactly-once), another deployment another one,
    and the file's checksum alone does not give it."""
    checksum = "ab" * 32
    ids = []
    for _ in range(2):  # two deployments
        with moto_in_process():
            batches = Batches(boto3.client("dynamodb"), create_resources(config).table)
            with ThreadPoolExecutor(4) as pool:  # racing first submits agree on one salt
                salts = {f.result() for f in [pool.submit(batches.id_salt) for _ in range(8)]}
            (salt,) = salts
            assert checksum_batch_id(checksum, salt) == checksum_batch_id(checksum, salt)
            ids.append(checksum_batch_id(checksum, salt))
    assert ids[0] != ids[1]
    assert all(i.startswith("b-") and checksum[:8] not in i for i in ids)
