"""Random interleavings of the gatherer's runs over a few parts, each run dying (or not)
at a random crash point (``batchroute/crash.py``), the parts' files submitted between
runs: whatever the order, once the runs go on without dying every job is answered once,
each part reached its provider once, and the books add up (issue 17's crash promises,
as a property).

The runs are ``batchroute.handler.run`` called here one after the other, on the local
runtime's moto and simulator (its own gatherer schedule is never due), each part one
batch's jobs (``MAX_BATCHES_PER_PART`` 1), the provider's turnaround 0 so a part can end
by the next run. The batch queue's visibility is 2 s: a dead run's messages come back
soon (and a run's 1 s confirming poll never takes its own again).
"""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from chatbatch.batchroute import crash, gather
from chatbatch.batchroute.clients import BatchClients
from chatbatch.batchroute.handler import run
from chatbatch.client.flush_objects import cost_lines, index_results
from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LOCAL_KEY, LocalRuntime
from chatbatch.local.simulator import SimulatorSettings
from chatbatch.state.budget.budget import Budget
from chatbatch.state.parts import PartState
from chatbatch.worker.crash import WorkerCrash
from chatbatch.worker.services import Services, api_key, build_services
from tests.integration.test_batch_route import MODEL, job, priced
from tests.integration.test_batch_route_crashes import money_held

pytestmark = pytest.mark.slow

DRAIN_RUNS = 30  # runs without crashes to finish what the random ones left
# A message is received once by each run that dies before its part is recorded; the batch
# queue's DLQ takes it only after BATCH_MAX_RECEIVES of them
# (``test_jobs_whose_messages_dead_runs_sent_to_the_batch_dlq_are_not_lost``: six). The
# property keeps to at most this many dying runs, to stay short.
MAX_DEATHS = 2
_examples = itertools.count()

# a run: it dies at the k-th crash point it reaches (any of them: between any two of its
# writes, wherever it is in its parts), or lives (0, or fewer points reached than k);
# four runs that live and up to MAX_DEATHS that die, in any order
plans = st.lists(st.integers(1, 7), max_size=MAX_DEATHS).flatmap(
    lambda deaths: st.permutations([*deaths, 0, 0, 0, 0])
)
# each part's file: its jobs, and before which of the random runs it is submitted
files = st.lists(st.tuples(st.integers(1, 4), st.integers(0, 3)), min_size=1, max_size=3)


class Runner:
    """The gatherer's runs against one local runtime, and what they must add up to."""

    def __init__(self, rt: LocalRuntime, tmp: Path) -> None:
        self.rt = rt
        self.tmp = tmp
        self.s: Services = build_services()
        self.clients = BatchClients(self.s.config, api_key)
        assert rt.resources.batch_queue
        self.queue: str = rt.resources.batch_queue

    def submit(self, batch_id: str, jobs: int) -> None:
        path = self.tmp / f"{batch_id}.jsonl"
        lines = [job(i, batch=True) for i in range(jobs)]
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        self.rt.submit(path, batch_id=batch_id)

    def run(self, dies: int = 0) -> str | None:
        """One run; the point it died at, if it did."""
        reached: list[str] = []

        def hook(name: str) -> bool:
            reached.append(name)
            return len(reached) == dies

        crash.crash_hook = hook
        try:
            run(self.s, self.clients, self.queue)
        except WorkerCrash:
            return reached[-1]
        finally:
            crash.crash_hook = None
        return None

    def finished(self, batches: dict[str, int]) -> bool:
        for batch_id, jobs in batches.items():
            info = self.rt.batches.get(batch_id)
            if info is None or info.succeeded < jobs:
                return False
        return all(p.state is PartState.done for p in self.s.parts.listed())


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    sim = SimulatorSettings(batch_turnaround_s=0.0)
    options = LocalOptions(timeout_s=60, gather_every_s=10**7, simulator=sim)
    with pytest.MonkeyPatch.context() as patch, LocalRuntime(options) as rt:
        patch.setattr(gather, "MAX_BATCHES_PER_PART", 1)
        assert rt.resources.batch_queue
        boto3.client("sqs").set_queue_attributes(
            QueueUrl=rt.resources.batch_queue, Attributes={"VisibilityTimeout": "2"}
        )
        yield Runner(rt, tmp_path_factory.mktemp("model"))


def provider_parts(rt: LocalRuntime) -> Counter[str]:
    """How many provider batches name each part (every batch the simulator created)."""
    assert rt.simulator is not None
    named: Counter[str] = Counter()
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 100} | ({"after": after} if after else {})
        page = httpx.get(
            f"{rt.simulator.base_url}/batches",
            params=params,
            headers={"Authorization": f"Bearer {LOCAL_KEY}"},
        ).json()
        named.update(b["metadata"].get(gather.PART_METADATA) for b in page["data"])
        if not page["has_more"]:
            return named
        after = page["last_id"]


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(parts=files, plan=plans)
def test_any_interleaving_of_dying_runs_answers_each_job_once_and_books_it_once(
    runner: Runner, parts: list[tuple[int, int]], plan: list[int]
) -> None:
    example = next(_examples)
    batches = {f"m{example}-{k}": jobs for k, (jobs, _) in enumerate(parts)}
    for i, dies in enumerate(plan):
        for k, (jobs, before) in enumerate(parts):
            if before == i:
                runner.submit(f"m{example}-{k}", jobs)
        died = runner.run(dies)
        if died is not None:
            event(f"died at {died}")
            time.sleep(0.3)  # a dead run's messages come back within seconds
    for _ in range(DRAIN_RUNS):
        if runner.finished(batches):
            break
        runner.run()
        time.sleep(0.3)
    rt, s = runner.rt, runner.s
    assert runner.finished(batches), "every job answered and every part closed"

    # each part reached its provider once; each provider batch is a part's
    named = provider_parts(rt)
    opened = {p.part_id for p in s.parts.listed() if p.provider_batch_id}
    assert set(named) == opened and all(n == 1 for n in named.values()), named

    # each job answered once, its own answer; each cost once, adding up per batch
    s3 = boto3.client("s3")
    for batch_id, jobs in batches.items():
        info = rt.batches.get(batch_id)
        assert info is not None and (info.succeeded, info.batched) == (jobs, 0), info
        index = index_results(s3, rt.store, rt.batches, batch_id)
        for i in range(jobs):
            text = index.result(f"job-{i}")
            assert text is not None, (batch_id, i)
            content = json.loads(text)["response"]["body"]["choices"][0]["message"]["content"]
            assert f"word{i} " in content + " ", (batch_id, content)
        costs = [json.loads(c) for c in cost_lines(s3, rt.resources.bucket, rt.batches, batch_id)]
        assert sorted(c["custom_id"] for c in costs) == sorted(f"job-{i}" for i in range(jobs))
        assert sum(c["cost_nanos"] for c in costs) == info.cost_nanos

    # the books of every example so far: the ledger is what the simulator billed
    assert rt.simulator is not None
    model = next(m for m in rt.config.models.values() if m.model_id == MODEL)
    bill = rt.simulator.stats().batch_billed_by_model[MODEL].model_dump()
    usage = Budget(boto3.client("dynamodb"), rt.resources.table, rt.config).usage()
    assert usage.spent_usd == priced(bill, model.batch_priced())
    assert usage.reserved_usd == Decimal(0) and money_held(rt) == []


def test_jobs_whose_messages_dead_runs_sent_to_the_batch_dlq_are_not_lost(runner: Runner) -> None:
    """Six runs in a row die before the part of a file's jobs is recorded (a run that
    times out with parts left, as one holding 50,000 messages may): each received the
    messages, past the priority queues' max_receive_count (5). The batch queue's DLQ
    takes a message only after ``BATCH_MAX_RECEIVES`` dead runs: the jobs are answered."""
    batch_id = f"dlq{next(_examples)}"
    runner.submit(batch_id, 2)
    for _ in range(6):
        assert runner.run(1) == "gather_after_file"
        time.sleep(2.2)
    for _ in range(5):
        if runner.finished({batch_id: 2}):
            break
        runner.run()
        time.sleep(0.3)
    assert runner.finished({batch_id: 2})
