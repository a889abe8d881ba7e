"""DynamoDB requests per rate-limiter acquisition, with and without leases, and what it takes
to reach 10,000 acquisitions per second.

Simulated worker instances (each its own ``RateLimiter``, as separate Lambdas) take jobs
in batches of ``--batch`` on a simulated clock, against moto; every DynamoDB request is
counted with botocore's event hooks. "One by one" acquires and reconciles each job on
its own; "lease" takes capacity for the whole batch in one write and gives back in one
more. Each runs with slack (``--rate`` asked, the limit far above it) and saturated (twice
the limit asked, for ~40 s so the window fills; a denied worker retries after the
``wait_s`` it was told). The size of
a full shard item (61 slots, four priorities busy) gives the WCU per write, and from it
the shards needed for 10,000 acquisitions per second::

    python bench/bench_limiter.py [--jobs 1000] [--workers 20] [--batch 10] [--rate 2000]
"""

from __future__ import annotations

import argparse
import heapq
import math
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import boto3

from chatbatch.core.config import Config, Priority, load_config
from chatbatch.core.resources import TABLE_PK, TABLE_SK, TABLE_TTL
from chatbatch.local.aws import create_table, moto_in_process
from chatbatch.state.item_size import item_size
from chatbatch.state.limiter.item import open_attr, prio_attr, slot_attr
from chatbatch.state.limiter.limiter import RateLimiter
from chatbatch.state.limiter.policy import METRICS, PRIO_SLOTS, WINDOW_SLOTS

MODEL = "bench-model"
TABLE = "bench"
START = 1_764_288_000.0
PARTITION_WCU_S = 1_000  # DynamoDB: one partition (one item) takes 1,000 WCU/s
TARGET = 10_000  # acquisitions per second


@dataclass
class Counts:
    calls: Counter[str] = field(default_factory=Counter)
    failed: int = 0
    granted: int = 0
    asked: int = 0
    seconds: float = 0.0  # simulated

    def per_grant(self, op: str) -> float:
        return self.calls[op] / max(self.granted, 1)

    @property
    def writes(self) -> int:
        return self.calls["UpdateItem"]

    @property
    def reads(self) -> int:
        return self.calls["GetItem"]


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def bench_config(config: Config, rpm: int) -> Config:
    model = config.models["deepseek-chat"].model_copy(
        update={"rpm": rpm, "tpm": 10**12, "model_id": MODEL}
    )
    return config.model_copy(update={"models": {**config.models, MODEL: model}})


def run(config: Config, args: argparse.Namespace, *, lease: bool, rpm: int, rate: float) -> Counts:
    counts = Counts()
    with moto_in_process():
        client = boto3.client("dynamodb", region_name="us-east-1")
        create_table(client, TABLE)

        def count(model: Any, **_: Any) -> None:
            counts.calls[model.name] += 1

        def failed(parsed: dict[str, Any], **_: Any) -> None:
            if parsed.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                counts.failed += 1

        client.meta.events.register("before-call.dynamodb", count)
        client.meta.events.register("after-call.dynamodb.UpdateItem", failed)
        simulate(client, bench_config(config, rpm), args, lease=lease, rate=rate, counts=counts)
    return counts


def simulate(
    client: Any,
    config: Config,
    args: argparse.Namespace,
    *,
    lease: bool,
    rate: float,
    counts: Counts,
) -> None:
    """Each worker takes a batch every ``workers x batch / rate`` seconds; a denied one
    asks again after the wait it was told."""
    clock, rng = Clock(), random.Random(1)
    every = args.workers * args.batch / rate
    workers = [
        RateLimiter(client, TABLE, config, clock=clock, rng=random.Random(i))
        for i in range(args.workers)
    ]
    batches: list[list[int]] = [[] for _ in workers]
    due = [(START + every * i / args.workers, i) for i in range(args.workers)]
    while counts.granted < args.jobs:
        clock.now, i = heapq.heappop(due)
        if not batches[i]:
            batches[i] = [rng.randint(500, 1500) for _ in range(args.batch)]
        asked = batches[i] if lease else batches[i][:1]
        counts.asked += len(asked)
        with workers[i].lease(MODEL, Priority.normal, asked) as held:
            for j, estimate in enumerate(held.grant.tokens):
                held.reconcile(j, estimate * 7 // 10)
        counts.granted += held.granted
        del batches[i][: held.granted]
        if not batches[i]:
            delay = every  # the next batch
        elif held.granted == len(asked):
            delay = 0.0  # one by one: the next job of the batch, now
        else:
            delay = held.wait_s  # denied (all or the rest): as told
        heapq.heappush(due, (clock.now + delay, i))
    counts.seconds = clock.now - START


def full_item_bytes(acq_per_s: float) -> tuple[int, int]:
    """Attributes and bytes of a shard item at steady state: every slot of the window
    and every priority slot in use, at ``acq_per_s`` acquisitions of ~1,000 tokens."""
    slot = 1_764_288_000
    per_slot = max(1, round(acq_per_s))
    attrs: dict[str, int] = {}
    for s in range(slot - WINDOW_SLOTS, slot + 1):
        attrs[slot_attr("r", s)] = per_slot
        attrs[slot_attr("t", s)] = per_slot * 1000
    for c in range(slot // 10 - PRIO_SLOTS + 1, slot // 10 + 1):
        for m in METRICS:
            scale = 1000 if m == "t" else 1
            attrs[open_attr(m, c)] = per_slot * scale
            for rank in range(4):
                attrs[prio_attr(rank, m, c)] = per_slot * 10 * scale // 4
    for rank in range(4):
        attrs[f"s{rank}"] = slot
        attrs[f"w{rank}"] = 1500
    attrs |= {"f": 1, "fa": slot, "lr": 600_000, "lt": 10**9, TABLE_TTL: slot}
    item = {name: {"N": str(value)} for name, value in attrs.items()}
    item |= {TABLE_PK: {"S": f"limiter#{MODEL}#0"}, TABLE_SK: {"S": "state"}}
    return len(item), item_size(item)


def report(name: str, counts: Counts, wall: float) -> None:
    total = sum(counts.calls.values()) / max(counts.granted, 1)
    print(
        f"  {name:<26} {counts.per_grant('GetItem'):6.3f} {counts.per_grant('UpdateItem'):7.3f}"
        f" {counts.failed / max(counts.granted, 1):7.3f} {total:7.3f}"
        f"   {counts.granted:>5} granted of {counts.asked:>6} asked in {counts.seconds:5.1f} s"
        f" ({wall:4.1f} s wall)"
    )


def arithmetic(results: dict[str, Counts], shards: int) -> None:
    attrs, size = full_item_bytes(TARGET / shards)
    wcu = math.ceil(size / 1024)
    writes_per_item = PARTITION_WCU_S / wcu
    print(
        f"\nfull shard item at {TARGET / shards:,.0f} acquisitions/s: {attrs} attributes, "
        f"~{size:,} bytes -> {wcu} WCU per write -> {writes_per_item:,.0f} writes/s per item"
        f" (one partition: {PARTITION_WCU_S:,} WCU/s)"
    )
    print(f"to reach {TARGET:,} acquisitions/s (writes per granted acquisition as measured):")
    for name, per_acq in (
        ("one by one", results["one by one, with slack"].per_grant("UpdateItem")),
        ("lease", results["lease, with slack"].per_grant("UpdateItem")),
    ):
        per_item = writes_per_item / per_acq
        print(
            f"  {name:<11} {per_acq:5.2f} writes/acq x {wcu} WCU = {TARGET * per_acq * wcu:,.0f}"
            f" WCU/s -> {per_item:6,.0f} acq/s per item -> {math.ceil(TARGET / per_item)} shards"
            f" at 100 %, {math.ceil(TARGET / per_item / 0.5)} at 50 % of the partition limit"
        )
    print(
        "  reads: at most one strongly consistent GetItem (1 RCU) per worker instance and"
        " shard per second; denials inside a second are answered from that copy"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000, help="granted acquisitions per run")
    parser.add_argument("--workers", type=int, default=20, help="worker instances")
    parser.add_argument("--batch", type=int, default=10, help="jobs per SQS batch (lease)")
    parser.add_argument("--rate", type=float, default=2000, help="offered acquisitions/s")
    parser.add_argument("--shards", type=int, default=4, help="for the item size arithmetic")
    args = parser.parse_args()
    for name, value in {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(name, value)
    os.environ.pop("AWS_ENDPOINT_URL", None)
    config = load_config(os.environ.get("CHATBATCH_CONFIG", "chatbatch.toml"))
    limit = args.jobs / 40  # saturated: the grants take ~40 s, the window fills
    scenarios = {
        "with slack": (args.rate, int(args.rate * 600)),
        "saturated 2x": (
            2 * limit,
            int(limit * 60),
        ),
    }
    print(
        f"{args.workers} worker instances, batches of {args.batch}; with slack {args.rate:,.0f}"
        f" acquisitions/s asked, saturated {2 * limit:,.0f}/s against {limit * 60:,.0f} rpm."
        "\nDynamoDB requests per granted acquisition:"
    )
    print(f"  {'':<26} {'reads':>6} {'writes':>7} {'failed':>7} {'total':>7}")
    results: dict[str, Counts] = {}
    for lease in (False, True):
        for label, (rate, rpm) in scenarios.items():
            name = f"{'lease' if lease else 'one by one'}, {label}"
            started = time.perf_counter()
            results[name] = run(config, args, lease=lease, rpm=rpm, rate=rate)
            report(name, results[name], time.perf_counter() - started)
    arithmetic(results, args.shards)


if __name__ == "__main__":
    main()
