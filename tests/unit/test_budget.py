"""The shared budget: reserve the worst case, settle exactly once, never pass the limit."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import boto3
import pytest
from prompt_corpus import big_tool

from chatbatch.core.config import Config
from chatbatch.core.days import next_midnight, seconds_to_midnight, utc_day
from chatbatch.core.job_lines import parse_line
from chatbatch.core.jobs import Job
from chatbatch.core.pricing import Usage, cost, to_nanos
from chatbatch.local.aws import create_resources, moto_in_process
from chatbatch.local.simulator import Engine, SimulatorSettings
from chatbatch.state.budget.budget import Budget
from chatbatch.state.budget.errors import (
    BUSY_RETRY_S,
    AlreadySettled,
    BudgetDeferred,
    HeldElsewhere,
    OverRequestCap,
)
from chatbatch.state.budget.ledger import reservation_key
from chatbatch.state.budget.reservations import Ask, arm_item

USD = 1_000_000_000  # nanos


def with_budget(config: Config, **budget: object) -> Config:
    return config.model_copy(update={"budget": config.budget.model_copy(update=budget)})


class Clock:
    def __init__(self, now: float = 1_790_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def table(config: Config) -> Iterator[str]:
    with moto_in_process():
        yield create_resources(config).table


def make(config: Config, table: str, clock: Clock | None = None, **budget: object) -> Budget:
    return Budget(
        boto3.client("dynamodb"), table, with_budget(config, **budget), clock=clock or Clock()
    )


def race(budget: Budget, draw: Callable[[random.Random], tuple[int, Callable[[], int]]]):
    """64 threads, each reserving a drawn worst case and settling what its call cost, until
    it is refused 5 times: (worst, actual) of every settlement."""
    settled: list[tuple[int, int]] = []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        refusals = 0
        for n in range(1000):
            worst, call = draw(rng)
            try:
                r = budget.reserve(f"t{seed}-{n}", worst)
            except BudgetDeferred:
                refusals += 1
                if refusals >= 5:
                    return
                continue
            actual = call()
            assert budget.settle(r, actual)
            with lock:
                settled.append((worst, actual))

    with ThreadPoolExecutor(64) as pool:
        list(pool.map(worker, range(64)))
    return settled


def test_racing_reservations_never_pass_one_dollar(config: Config, table: str):
    budget = make(config, table, daily_usd=Decimal(1))

    def draw(rng: random.Random) -> tuple[int, Callable[[], int]]:
        worst = rng.randint(USD // 100, USD // 40)  # $0.010 - $0.025
        return worst, lambda: worst * rng.randint(60, 100) // 100

    total = sum(actual for _, actual in race(budget, draw))
    usage = budget.usage()
    assert total <= USD
    assert total >= 0.9 * USD
    assert to_nanos(usage.spent_usd) == total  # the ledger equals the sum of settlements
    assert usage.reserved_usd == 0


HARD_JOBS = [
    # open-ended: no max_tokens, so the provider's own (far larger) cap would apply
    {"prompt": "tell me everything you know"},
    {"prompt": "write the whole module", "role": "code"},
    # n choices, each billed at the cap, beside a 20 KB tool schema
    {
        "custom_id": "x",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "gpt-4.1",
            "messages": [{"role": "user", "content": "go"}],
            "n": 5,
            "tools": [big_tool(20_000)],
        },
    },
    {
        "custom_id": "x",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "messages": [{"role": "user", "content": "list", "name": "ana"}],
            "n": 3,
            "max_tokens": 700,
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "items",
                    "schema": big_tool(3000)["function"]["parameters"],
                },
            },
        },
    },
    # a tool-call history sent back
    {
        "model": "gemini-2.5-flash",
        "messages": [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {
                            "name": "weather",
                            "arguments": '{"city":"Paris","days":[1,2,3]}',
                        },
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny " * 200},
        ],
    },
]


def test_racing_real_jobs_never_pass_the_limit_or_bill_past_their_reservation(
    config: Config, table: str
):
    """The 64-way race with worst cases computed from real Jobs (open caps, n > 1, tool
    schemas, tool-call histories) and costs billed by the simulator, which answers every
    request at the length the request allows (the model's own limit when no cap is sent).
    The same race through the real worker, with unread answers and answers without usage:
    ``tests/integration/test_budget_race.py``."""
    budget = make(config, table, daily_usd=Decimal(1))
    jobs = [parse_line(json.dumps(line), config, line=1) for line in HARD_JOBS]
    engine = Engine(
        SimulatorSettings(answer_tokens=100_000, open_answer_tokens=65_536, config_models=False)
    )
    engine_lock = threading.Lock()

    def bill(job: Job) -> int:
        model = config.models[job.model]
        body = json.dumps(job.request_body(model)).encode()
        with engine_lock:  # the engine runs on one event loop in the simulator
            reply = engine.handle("POST", "/v1/chat/completions", {}, body)
        assert reply.status == 200, reply.body
        return to_nanos(cost(Usage.from_api(json.loads(reply.body)["usage"]), model))

    def draw(rng: random.Random) -> tuple[int, Callable[[], int]]:
        job = rng.choice(jobs)
        return to_nanos(job.worst_case_usd(config.models[job.model])), lambda: bill(job)

    settled = race(budget, draw)
    assert [(worst, actual) for worst, actual in settled if actual > worst] == []
    total = sum(actual for _, actual in settled)
    usage = budget.usage()
    assert total <= USD
    assert to_nanos(usage.spent_usd) == total
    assert usage.reserved_usd == 0
    assert len(settled) >= 10


def test_settle_and_reserve_are_idempotent_per_job(config: Config, table: str):
    budget = make(config, table, daily_usd=Decimal(1))
    r = budget.reserve("b#job", USD // 10)
    again = budget.reserve("b#job", USD // 10)  # a redelivered message
    assert again == r.model_copy(update={"resumed": True})
    assert budget.usage().reserved_usd == Decimal("0.1")
    assert budget.settle(r, USD // 20)
    assert not budget.settle(r, USD // 20)  # counted once
    usage = budget.usage()
    assert (usage.spent_usd, usage.reserved_usd) == (Decimal("0.05"), 0)


def ledger_writes(monkeypatch: pytest.MonkeyPatch, budget: Budget) -> list[int]:
    """How many items each transaction of ``budget`` writes to the day ledger."""
    seen: list[int] = []
    transact = budget._transact

    def counting(items: list[dict]) -> list[dict]:
        seen.append(
            sum(
                it.get("Update", {}).get("Key", {}).get("sk") == {"S": "ledger"}
                and "budget#day#" in it["Update"]["Key"]["pk"]["S"]
                for it in items
            )
        )
        return transact(items)

    monkeypatch.setattr(budget, "_transact", counting)
    return seen


def test_an_invocations_jobs_reserve_together_with_one_ledger_write(
    config: Config, table: str, monkeypatch: pytest.MonkeyPatch
):
    budget = make(config, table, daily_usd=Decimal(10))
    writes = ledger_writes(monkeypatch, budget)
    asks = [Ask(f"b#j{i}", USD // 10, "b", USD) for i in range(10)]
    held = budget.reserve_many(asks)
    assert writes == [1]  # one transaction, one day-ledger write for ten jobs
    assert sorted(held) == sorted(a.job_key for a in asks)
    assert budget.usage().reserved_usd == Decimal(1)
    # each holds its own reservation: a redelivery gets it back, settling is per job
    again = budget.reserve("b#j3", USD // 10, batch_id="b", batch_limit_nanos=USD)
    assert again == held["b#j3"].model_copy(update={"resumed": True})
    # the batch ledger took the sum too: the batch's $1 is held
    with pytest.raises(BudgetDeferred, match="batch b"):
        budget.reserve("b#more", USD // 10, batch_id="b", batch_limit_nanos=USD)
    for i, r in enumerate(held.values()):
        assert budget.settle(r, USD // 100 * i)
    usage = budget.usage()
    assert (usage.spent_usd, usage.reserved_usd) == (Decimal("0.45"), 0)


def test_reserving_together_is_all_or_nothing(config: Config, table: str):
    budget = make(config, table, daily_usd=Decimal(1))
    budget.reserve("b#held", USD // 10)  # e.g. a redelivery: it holds one already
    together = [Ask("b#held", USD // 10), Ask("b#new", USD // 10)]
    assert budget.reserve_many(together) == {}
    assert budget.usage().reserved_usd == Decimal("0.1")  # nothing half-written
    # the sum does not fit although each would: nothing, then one by one
    too_much = [Ask(f"b#x{i}", USD * 4 // 10) for i in range(3)]
    assert budget.reserve_many(too_much) == {}
    assert budget.usage().reserved_usd == Decimal("0.1")
    budget.reserve("b#x0", USD * 4 // 10)
    budget.reserve("b#x1", USD * 4 // 10)
    with pytest.raises(BudgetDeferred):
        budget.reserve("b#x2", USD * 4 // 10)
    # a duplicate key, a job over the request cap, or a single job: not together
    assert budget.reserve_many([Ask("b#d", 1), Ask("b#d", 1)]) == {}
    assert budget.reserve_many([Ask("b#y", 1), Ask("b#z", USD * 100)]) == {}
    assert budget.reserve_many([Ask("b#only", 1)]) == {}
    assert budget.usage().reserved_usd == Decimal("0.9")


def test_only_the_copy_that_holds_a_reservation_gets_it(config: Config, table: str):
    clock = Clock()
    budget = make(config, table, clock, daily_usd=Decimal(1), reservation_ttl_s=900)
    mine = budget.reserve("b#job", USD // 10, owner="msg-1")
    # another message carrying the same job (a resend, a duplicate) is told to look later
    with pytest.raises(HeldElsewhere) as caught:
        budget.reserve("b#job", USD // 10, owner="msg-2")
    assert 0 < caught.value.retry_after_s <= 15
    assert budget.reserve_many([Ask("b#job", USD // 10, owner="msg-2"), Ask("b#x", 1)]) == {}
    # the holder's own redelivery gets it back, marked as held before (the job may
    # have been called already: look for its stored result before calling)
    again = budget.reserve("b#job", USD // 10, owner="msg-1")
    assert not mine.resumed and again == mine.model_copy(update={"resumed": True})
    # a holder that died: its claim expires and the other copy takes over, once
    clock.now += 901
    theirs = budget.reserve("b#job", USD // 10, owner="msg-2")
    assert theirs.owner == "msg-2" and theirs.resumed
    with pytest.raises(HeldElsewhere):
        budget.reserve("b#job", USD // 10, owner="msg-1")
    assert budget.settle(theirs, USD // 20)
    assert budget.usage().reserved_usd == 0
    with pytest.raises(AlreadySettled):
        budget.reserve("b#job", USD // 10, owner="msg-1")


def test_crashed_reservation_is_reclaimed_after_its_ttl(config: Config, table: str):
    clock = Clock()
    budget = make(config, table, clock, daily_usd=Decimal(1), reservation_ttl_s=900)
    budget.reserve("crashed", USD * 9 // 10)  # a worker dies here: never settled
    with pytest.raises(BudgetDeferred):
        budget.reserve("next", USD // 5)
    clock.now += 901
    r = budget.reserve("next", USD // 5)  # the dead reservation was reclaimed first
    assert budget.settle(r, USD // 5)
    usage = budget.usage()
    assert (usage.spent_usd, usage.reserved_usd) == (Decimal("0.2"), 0)


def test_daily_deferral_until_midnight_and_raising_the_limit(config: Config, table: str):
    clock = Clock()
    budget = make(config, table, clock, daily_usd=Decimal("0.5"))
    budget.settle(budget.reserve("a", USD // 2), USD // 2)  # the day's money is spent
    with pytest.raises(BudgetDeferred, match=r"daily budget \$0.5 reached") as caught:
        budget.reserve("b", 1)
    assert caught.value.retry_after_s == pytest.approx(seconds_to_midnight(clock.now))
    assert caught.value.until == next_midnight(clock.now)
    assert caught.value.scope == "day"
    budget.set_daily_limit(Decimal(2))
    assert budget.reserve("b", USD).nanos == USD


def test_batch_budget_defers_its_own_jobs_only(config: Config, table: str):
    budget = make(config, table, daily_usd=Decimal(10))
    r = budget.reserve("a", USD // 2, batch_id="small", batch_limit_nanos=USD // 2)
    budget.settle(r, USD // 2)
    with pytest.raises(BudgetDeferred, match="batch small reached its budget") as caught:
        budget.reserve("b", USD // 10, batch_id="small", batch_limit_nanos=USD // 2)
    assert caught.value.retry_after_s == 300
    budget.reserve("c", USD // 10, batch_id="other", batch_limit_nanos=USD // 2)


def test_request_over_the_cap_is_refused_with_the_amounts(config: Config, table: str):
    budget = make(config, table, request_cap_usd=Decimal("0.01"))
    with pytest.raises(OverRequestCap, match=r"worst case \$0.02 is above .* \$0.01"):
        budget.reserve("big", USD // 50)


def test_release_gives_the_reservation_back(config: Config, table: str):
    budget = make(config, table, daily_usd=Decimal(1))
    r = budget.reserve("x", USD)
    assert budget.release(r)
    assert not budget.release(r)
    assert budget.usage().reserved_usd == 0


def test_reservations_in_flight_defer_briefly_not_until_midnight(config: Config, table: str):
    """Worst cases held by running calls usually settle far lower: ask again soon."""
    budget = make(config, table, daily_usd=Decimal(1))
    held = budget.reserve("running", USD * 9 // 10)
    with pytest.raises(BudgetDeferred, match="held by reservations in flight") as caught:
        budget.reserve("next", USD // 5)
    assert caught.value.retry_after_s == BUSY_RETRY_S
    assert caught.value.until is None
    budget.settle(held, USD // 10)  # the call cost far less than its worst case
    assert budget.reserve("next", USD // 5)
    r = budget.reserve("b1", USD // 10, batch_id="b", batch_limit_nanos=USD // 10)
    with pytest.raises(BudgetDeferred, match="held by reservations in flight") as caught:
        budget.reserve("b2", USD // 10, batch_id="b", batch_limit_nanos=USD // 10)
    assert (caught.value.scope, caught.value.retry_after_s) == ("batch", BUSY_RETRY_S)
    budget.release(r)
    assert budget.reserve("b2", USD // 10, batch_id="b", batch_limit_nanos=USD // 10)


def test_reserving_a_settled_job_says_so(config: Config, table: str):
    budget = make(config, table, daily_usd=Decimal(1))
    budget.settle(budget.reserve("b#done", USD // 10), USD // 20)
    with pytest.raises(AlreadySettled, match=r"job b#done was already settled at \$0.05"):
        budget.reserve("b#done", USD // 10)  # a redelivered message: do not call again
    assert budget.usage().spent_usd == Decimal("0.05")


def test_a_redelivered_job_keeps_its_reservation_alive(config: Config, table: str):
    clock = Clock()
    budget = make(config, table, clock, daily_usd=Decimal(1), reservation_ttl_s=900)
    first = budget.reserve("slow", USD // 10)
    clock.now += 800
    again = budget.reserve("slow", USD // 5)
    assert again == first.model_copy(update={"resumed": True})  # the held amount, not a new one
    clock.now += 200  # past the first deadline, within the extended one
    assert budget.reclaim() == 0
    assert budget.settle(first, USD // 10)


def test_reclaim_reads_only_open_reservations(config: Config, table: str):
    clock = Clock()
    budget = make(config, table, clock, daily_usd=Decimal(10))
    for i in range(30):
        budget.settle(budget.reserve(f"done-{i}", USD // 100), USD // 200)
    budget.reserve("crashed", USD // 100)
    ddb = boto3.client("dynamodb")
    scanned: list[int] = []
    ddb.meta.events.register(
        "after-call.dynamodb.Query",
        lambda parsed, **_: scanned.append(parsed.get("ScannedCount", 0)),
    )
    clock.now += 901
    reader = Budget(ddb, table, with_budget(config, daily_usd=Decimal(10)), clock=clock)
    assert reader.reclaim() == 1
    assert sum(scanned) == 1  # the one open reservation, not the 30 settled ones
    assert reader.usage().reserved_usd == 0


def open_markers(table: str, day: str) -> list[dict[str, Any]]:
    reply = boto3.client("dynamodb").query(
        TableName=table,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": f"budget#open#{day}"}},
        ConsistentRead=True,
    )
    return reply["Items"]


def test_a_group_has_one_open_marker_and_reclaim_reads_through_it(config: Config, table: str):
    """``reserve_many`` writes one open marker for its jobs, not one each, and settling one
    of them writes none. When the group's worker died: its expired reservations are
    reclaimed through the marker, one a copy took back since (extended) is not, and the
    marker goes once everything it names is closed."""
    clock = Clock()
    budget = make(config, table, clock, daily_usd=Decimal(10), reservation_ttl_s=900)
    held = budget.reserve_many([Ask(f"b#g{i}", USD // 10, owner=f"m{i}") for i in range(4)])
    day = held["b#g0"].day
    [marker] = open_markers(table, day)
    assert [j["S"] for j in marker["jobs"]["L"]] == [f"b#g{i}" for i in range(4)]
    assert budget.settle(held["b#g0"], USD // 100)
    assert len(open_markers(table, day)) == 1
    clock.now += 600
    again = budget.reserve("b#g1", USD // 10, owner="m1")  # its copy came back: extended
    assert again.resumed and again.marker == held["b#g1"].marker
    clock.now += 400  # g2 and g3 are past their deadline, g1 is not
    reader = Budget(boto3.client("dynamodb"), table, budget._config, clock=clock)
    assert reader.reclaim() == 2
    assert reader.usage(day).reserved_usd == Decimal("0.1")
    [marker] = open_markers(table, day)
    assert float(marker["reclaim_at"]["N"]) == pytest.approx(clock.now - 400 + 900)
    assert budget.settle(again, USD // 100)
    clock.now += 1_000
    assert reader.reclaim() == 0
    assert open_markers(table, day) == []
    usage = reader.usage(day)
    assert (usage.spent_usd, usage.reserved_usd) == (Decimal("0.02"), 0)


def test_a_release_that_fails_in_reclaim_leaves_the_groups_marker(
    config: Config, table: str, monkeypatch: pytest.MonkeyPatch
):
    """The marker of a group outlives a release that fails during ``reclaim`` (a conflict
    on the hot ledger past its retries): the next reclaim still finds the reservations
    (an adversarial review found the marker deleted before the releases)."""
    clock = Clock()
    budget = make(config, table, clock, daily_usd=Decimal(10), reservation_ttl_s=900)
    held = budget.reserve_many([Ask(f"b#{i}", 1_000, owner=str(i)) for i in range(3)])
    day = held["b#0"].day
    clock.now += 1_000
    real, calls = Budget.release, []

    def flaky(self: Budget, r: Any, **kw: Any) -> bool:
        calls.append(r)
        if len(calls) == 1:
            raise RuntimeError("TransactionCanceledException: TransactionConflict")
        return real(self, r, **kw)

    with monkeypatch.context() as patched:
        patched.setattr(Budget, "release", flaky)
        with pytest.raises(RuntimeError):
            budget.reclaim()
    assert len(open_markers(table, day)) == 1
    assert budget.reclaim() == 3
    assert budget.usage(day).reserved_usd == 0 and open_markers(table, day) == []


def test_a_dead_reservation_from_yesterday_frees_its_batch(config: Config, table: str):
    clock = Clock(next_midnight(1_790_000_000.0).timestamp() - 60)  # 23:59 UTC
    budget = make(config, table, clock, daily_usd=Decimal(10), reservation_ttl_s=900)
    budget.reserve("b#dead", USD // 2, batch_id="b", batch_limit_nanos=USD // 2)
    clock.now += 1_000  # the next day, past the deadline
    r = budget.reserve("b#next", USD // 2, batch_id="b", batch_limit_nanos=USD // 2)
    assert r.day != utc_day(clock.now - 1_000)


def test_one_copy_holds_a_job_across_midnight_and_its_day_pays(config: Config, table: str):
    """Copy A reserves at 23:59:59; copy B at 00:00:01 is told to look later, not given a
    reservation of the new day; A's redelivery after midnight resumes its own, and the
    settle charges the day the reservation was made."""
    midnight = next_midnight(1_790_000_000.0).timestamp()
    clock = Clock(midnight - 1)  # 23:59:59 UTC
    budget = make(config, table, clock, daily_usd=Decimal(1), reservation_ttl_s=900)
    before, after = utc_day(midnight - 1), utc_day(midnight + 1)
    mine = budget.reserve("b#job", USD // 10, batch_id="b", batch_limit_nanos=USD, owner="A")
    assert mine.day == before
    clock.now = midnight + 1  # 00:00:01 UTC, the next day
    with pytest.raises(HeldElsewhere):
        budget.reserve("b#job", USD // 10, batch_id="b", batch_limit_nanos=USD, owner="B")
    assert budget.reserve_many([Ask("b#job", USD // 10, owner="B"), Ask("b#x", 1)]) == {}
    assert budget.usage(after).reserved_usd == 0  # nothing held on the new day
    # the owner's redelivery (a hand-back, a crash) after midnight: its own, of yesterday
    again = budget.reserve("b#job", USD // 5, batch_id="b", batch_limit_nanos=USD, owner="A")
    assert again == mine.model_copy(update={"resumed": True})
    assert budget.settle(again, USD // 20)
    assert (budget.usage(before).spent_usd, budget.usage(before).reserved_usd) == (
        Decimal("0.05"),
        0,
    )
    assert (budget.usage(after).spent_usd, budget.usage(after).reserved_usd) == (0, 0)
    # paid for: a copy on a later day is told so (it does not call again)
    clock.now += 86_400
    with pytest.raises(AlreadySettled):
        budget.reserve("b#job", USD // 10, owner="C")


def test_a_dead_copys_claim_from_yesterday_is_taken_over_on_its_day(config: Config, table: str):
    """The owner died before midnight; after its claim expires, the next copy takes the
    reservation over (once) and it still belongs to yesterday's ledger; reclaim frees it
    from there too."""
    midnight = next_midnight(1_790_000_000.0).timestamp()
    clock = Clock(midnight - 60)
    budget = make(config, table, clock, daily_usd=Decimal(1), reservation_ttl_s=900)
    before, after = utc_day(midnight - 60), utc_day(midnight + 900)
    budget.reserve("b#job", USD // 10, owner="A")  # A dies here
    clock.now = midnight + 600  # the next day; A's claim has 240 s to go
    with pytest.raises(HeldElsewhere) as caught:
        budget.reserve("b#job", USD // 10, owner="B")
    assert caught.value.retry_after_s == 15
    clock.now = midnight + 900  # past A's deadline
    theirs = budget.reserve("b#job", USD // 10, owner="B")
    assert (theirs.owner, theirs.day, theirs.resumed) == ("B", before, True)
    with pytest.raises(HeldElsewhere):
        budget.reserve("b#job", USD // 10, owner="A")
    assert budget.usage(before).reserved_usd == Decimal("0.1")
    assert budget.usage(after).reserved_usd == 0
    clock.now += 901  # B dies too: the reclaim finds it on its day and frees that ledger
    assert budget.reclaim() == 1
    assert budget.usage(before).reserved_usd == 0
    fresh = budget.reserve("b#job", USD // 10, owner="C")  # reclaimed: reserved anew, today
    assert (fresh.day, fresh.resumed) == (utc_day(clock.now), False)


def test_a_reservation_is_armed_once_whoever_got_it_back(config: Config, table: str):
    """Two deliveries of one message (the first outlived its visibility timeout) both get
    the reservation back before either armed it: only the first arm passes, so only one
    of them calls; a retry of the same arm request (its write landed, its answer was lost)
    passes again."""
    budget = make(config, table)
    first = budget.reserve("twice", USD // 100, owner="copy-1")
    second = budget.reserve("twice", USD // 100, owner="copy-1")  # the same copy, again
    assert second.resumed and second.rid == first.rid and not second.armed
    assert budget.arm(first)
    assert not budget.arm(second), "the second delivery must not call too"
    ddb = boto3.client("dynamodb")
    item = ddb.get_item(TableName=table, Key=reservation_key("twice"))["Item"]
    again = arm_item(table, first, Clock()(), item["arm_token"]["S"])["Update"]
    ddb.update_item(**again)  # the same request, sent again: passes
    assert budget.settle(first, USD // 200)


def test_a_group_reserved_armed_skips_each_arm_write_and_unarms_what_stays_unsent(
    config: Config, table: str
):
    """``reserve_many(armed_for=flush)`` writes each reservation armed for that flush: the
    delivery's ``arm`` writes nothing; another delivery of the same copy is held off as
    from a call in flight; ``disarm`` (the job leaves unsent, keeping it) makes it the
    copy's to take back and arm again, and never unarms one whose call went out."""
    clock = Clock()
    budget = make(config, table, clock)
    ddb = boto3.client("dynamodb")

    def stored(key: str) -> dict[str, Any]:
        return ddb.get_item(TableName=table, Key=reservation_key(key), ConsistentRead=True)["Item"]

    asks = [Ask(f"b#{i}", USD // 100, owner=f"m{i}") for i in range(3)]
    held = budget.reserve_many(asks, armed_for="flush-1")
    assert set(held) == {"b#0", "b#1", "b#2"}
    for key, r in held.items():
        item = stored(key)
        assert item["armed"]["BOOL"] and item["flush"]["S"] == "flush-1"
        assert item["arm_token"]["S"] == r.arm_token and r.armed_unsent
    sent, kept, raised = held["b#0"], held["b#1"], held["b#2"]
    before = stored("b#0")
    assert budget.arm(sent) and not sent.armed_unsent
    assert stored("b#0") == before, "its arm was the reservation's own write"
    assert not budget.disarm(sent), "a call that went out is never unarmed"
    assert stored("b#0")["armed"]["BOOL"]
    # another delivery of the same copy while the reserving worker may live: held off
    with pytest.raises(HeldElsewhere):
        budget.reserve("b#1", USD // 100, owner="m1")
    assert budget.disarm(kept) and not kept.armed
    assert "armed" not in stored("b#1") and "arm_token" not in stored("b#1")
    back = budget.reserve("b#1", USD // 100, owner="m1")  # its next delivery takes it back
    assert back.resumed and not back.armed and back.rid == kept.rid
    assert budget.arm(back) and stored("b#1")["armed"]["BOOL"]
    assert not budget.disarm(kept), "armed again by the next delivery: not this arm's"
    assert budget.settle(back, USD // 200)
    # the worker dies: the call it sent (b#0) and the one it never sent (b#2) are both
    # booked at their worst case (over-booked, never under)
    clock.now += 901
    assert budget.reclaim() == 2
    day = budget.usage(utc_day(clock.now - 901))
    assert day.reserved_usd == 0
    assert day.spent_usd == Decimal(USD // 200 + USD // 100 + USD // 100) / USD
    assert not budget.disarm(raised), "reclaimed: nothing left to unarm"
