"""Overhead and cost: AWS requests per job, DynamoDB writes with and without leases,
Lambda GB-seconds per job (concurrent vs sequential), and the infrastructure bill per 1M
jobs next to the LLM bill.

Four runs of the same file (300 ms per answer, no rate limit in the way):

- **leases**: the worker as shipped: the jobs of a batch run concurrently and take their
  rate-limit capacity in one lease (one write, one give-back write per batch);
- **no leases**: the same, with the worker's ``Capacity`` replaced (from this benchmark,
  not in product code) by one that acquires and gives back per job;
- **batches of 10**: the shipped worker at ``worker.batch_size = 10``, the largest
  batch SQS hands Lambda without a batching window and the default until 2026-12-03
  (since then 40: above 10, SQS fills a batch within ``worker.batch_window_s``). The
  local feeder keeps each queue at most 100 deep, so the invocations here hold fewer
  than 40 jobs on average (the figure says how many), where a deployment's backlog fills
  them;
- **sequential**: ``worker.batch_size = 1``, one job per invocation: what a worker that
  processes a batch's jobs one after the other is billed for.

Lambda's time is what the invocations took here, plus the worker's own CPU time (its
event loop's thread and its io pool's, measured with ``time.thread_time``) stretched by
Lambda's CPU share: one vCPU at 1,769 MB, so at 512 MB that work takes 3.5 times as long.

Every AWS request is counted by botocore's event hooks; DynamoDB capacity units come from
each request and the size of the items it wrote, as moto holds them (``bench._capacity``:
1 WRU per started KB written, 2 in a transaction; 1 RRU per 4 KB strongly consistent).
Prices: us-east-1 list prices (SQS $0.40/M requests; DynamoDB on-demand $0.625/M WRU,
$0.125/M RRU; S3 PUT/LIST $0.005/1k, GET $0.0004/1k; Lambda arm64 $0.0000133334/GB-s +
$0.20/M requests)::

    python -m bench.bench_overhead [--jobs 300] [--repeat 2] [--quick]
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench._capacity import metered
from bench._common import (
    Figure,
    RunResult,
    Section,
    base_config,
    figures_table,
    finish,
    ops_table,
    parser,
    patched,
    run_file,
    runtime,
    say,
    table,
    watched,
    workdir,
    write_config,
    write_jobs,
)
from chatbatch.core.config import Config, Priority
from chatbatch.local.options import LocalOptions
from chatbatch.local.simulator import SimulatorSettings
from chatbatch.state.limiter.lease import Lease
from chatbatch.state.limiter.limiter import RateLimiter
from chatbatch.worker import handler as worker
from chatbatch.worker.capacity import Slot
from chatbatch.worker.services import io_threads

LATENCY_MS = 300
PRICES = {
    "sqs_request": Decimal("0.40") / 1_000_000,
    "wru": Decimal("0.625") / 1_000_000,
    "rru": Decimal("0.125") / 1_000_000,
    "s3_put": Decimal("0.005") / 1_000,
    "s3_get": Decimal("0.0004") / 1_000,
    "gb_s": Decimal("0.0000133334"),
    "lambda_request": Decimal("0.20") / 1_000_000,
}
S3_PUT_CLASS = {"PutObject", "ListObjectsV2", "CopyObject", "PostObject", "ListObjects"}
S3_GET_CLASS = {"GetObject", "HeadObject"}
DDB_WRITES = {"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem"}
PROJECTED_LATENCY_S = (1.0, 5.0, 20.0)
FULL_VCPU_MB = 1769  # Lambda's memory setting with one full vCPU
# Two instances per queue (the least the config allows): every emulated instance shares
# this process's CPU with moto, and more of them would bill GIL waits as Lambda time.
CONCURRENCY = 2


# --- without leases -----------------------------------------------------------------


class PerJobCapacity:
    """``Capacity`` without leases: every job acquires on its own and gives back on its own."""

    def __init__(self, limiter: RateLimiter, priority: Priority, jobs: int) -> None:
        self._limiter = limiter
        self._priority = priority
        self.leases: list[Lease] = []
        self.writes = 0

    def leave(self) -> None:
        pass

    async def take(self, model: str, tokens: int, *, first: bool = True) -> Slot | float:
        lease = await asyncio.to_thread(self._limiter.acquire, model, self._priority, tokens)
        self.writes += 1
        if not lease.granted:
            return lease.wait_s
        self.leases.append(lease)
        return lease, 0

    async def close(self) -> None:
        await asyncio.gather(*(asyncio.to_thread(lease.close) for lease in self.leases))


def without_leases() -> AbstractContextManager[None]:
    return patched((worker, "Capacity", PerJobCapacity))


# --- the worker's CPU ---------------------------------------------------------------


class CpuMeter:
    """CPU seconds the worker spent: each invocation's own thread (its event loop) and its
    blocking AWS calls (the instance's io pool), not moto's, the simulator's or the
    runtime's threads that share this process."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self.seconds += seconds


def timed(meter: CpuMeter, fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        start = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            meter.add(time.thread_time() - start)

    return call


@contextmanager
def cpu_metered() -> Iterator[CpuMeter]:
    meter = CpuMeter()

    class MeteredPool(ThreadPoolExecutor):
        def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
            return super().submit(timed(meter, fn), *args, **kwargs)

    def pool(config: Config) -> ThreadPoolExecutor:
        return MeteredPool(io_threads(config), thread_name_prefix="chatbatch-io")

    with patched(
        (worker, "io_pool", pool),
        (worker.Instance, "handle", timed(meter, worker.Instance.handle)),
    ):
        yield meter


# --- a run and its bill -------------------------------------------------------------


@dataclass
class Measured:
    mode: str
    jobs: int
    run: RunResult
    wru: Counter[str]
    rru: dict[str, float]
    writes: Counter[str]
    durations: list[float]
    records: list[int]
    memory_gb: float
    cpu_s: float  # the worker's CPU seconds in all (``CpuMeter``)

    def per_job(self, value: float) -> float:
        return value / self.jobs

    def aws(self, service: str, ops: set[str] | None = None) -> int:
        return sum(
            n for (s, op), n in self.run.aws.items() if s == service and (ops is None or op in ops)
        )

    @property
    def slowdown_s(self) -> float:
        """Seconds an invocation lasts longer on Lambda than here: Lambda gives a function
        CPU in proportion to its memory (one vCPU at 1,769 MB), so its CPU work takes
        ``1769 / memory_mb`` times as long as on this machine's one core. An upper bound:
        it counts none of that work as overlapping the answers' wait."""
        share = min(1.0, self.memory_gb * 1024 / FULL_VCPU_MB)
        return self.cpu_s / len(self.durations) * (1 / share - 1)

    @property
    def gb_s(self) -> float:
        return self.memory_gb * (sum(self.durations) + self.slowdown_s * len(self.durations))

    @property
    def overhead_s(self) -> float:
        """Mean billed time of an invocation beyond one provider answer (the median answer
        time the client measured)."""
        answer_s = (self.run.summary.p50_latency_ms or LATENCY_MS) / 1000
        return max(0.0, sum(self.durations) / len(self.durations) - answer_s)

    def projected_gb_s(self, latency_s: float) -> float:
        """GB-s per job if each answer took ``latency_s`` (invocations last their slowest)."""
        invocations = len(self.durations)
        billed_s = self.overhead_s + self.slowdown_s + latency_s
        return self.memory_gb * billed_s * invocations / self.jobs

    def bill(self, latency_s: float | None = None) -> dict[str, Decimal]:
        """USD per job by service."""
        n = Decimal(self.jobs)
        gb_s = self.gb_s / self.jobs if latency_s is None else self.projected_gb_s(latency_s)
        return {
            "SQS": PRICES["sqs_request"] * self.aws("sqs") / n,
            "DynamoDB writes": PRICES["wru"] * Decimal(sum(self.wru.values())) / n,
            "DynamoDB reads": PRICES["rru"] * Decimal(sum(self.rru.values())) / n,
            "S3": (
                PRICES["s3_put"] * self.aws("s3", S3_PUT_CLASS)
                + PRICES["s3_get"] * self.aws("s3", S3_GET_CLASS)
            )
            / n,
            "Lambda GB-s": PRICES["gb_s"] * Decimal(str(gb_s)),
            "Lambda requests": PRICES["lambda_request"] * len(self.durations) / n,
        }


# The runs: a name and the worker keys it changes from the shipped config.
MODES: dict[str, dict[str, Any]] = {
    "leases": {},
    "batches of 10": {"batch_size": 10},  # the shipped batch size until 2026-12-03
    "no leases": {},
    "sequential": {"batch_size": 1},
}


def measured_run(tmp: Path, jobs: int, mode: str, seed: int) -> Measured:
    config = base_config()
    changes = {"batch_size": config.worker.batch_size} | MODES[mode]
    config = config.model_copy(update={"worker": config.worker.model_copy(update=changes)})
    config_path = write_config(tmp / f"{mode}.json", config, worker=changes)
    path = write_jobs(tmp / "jobs.jsonl", jobs, max_tokens=50)
    sim = SimulatorSettings(latency_ms=LATENCY_MS)
    options = LocalOptions(
        config_path=config_path,
        rpm=1_000_000,
        tpm=1_000_000_000,
        simulator=sim,
        seed=seed,
        timeout_s=1800,
        concurrency=CONCURRENCY,
    )
    patch = without_leases() if mode == "no leases" else nullcontext()
    with patch, cpu_metered() as cpu, watched() as seen, runtime(options) as rt, metered() as meter:
        meter.start()
        run = run_file(rt, path, tmp / f"out-{mode}-{seed}", on_settled=meter.stop)
    return Measured(
        mode=mode,
        jobs=run.summary.succeeded,
        run=run,
        wru=Counter(meter.wru),
        rru=dict(meter.rru),
        writes=Counter(meter.writes),
        durations=list(seen.durations),
        records=[len(b) for b in seen.batches],
        memory_gb=config.worker.memory_mb / 1024,
        cpu_s=cpu.seconds,
    )


def llm_cost_per_job() -> dict[str, Decimal]:
    """USD for one job of 1,000 tokens at the configured DeepSeek V3.2 prices."""
    model = base_config().models["deepseek-chat"]
    m = Decimal(1_000_000)
    return {
        "1,000 in, 0 out": 1000 * model.input_per_m / m,
        "500 in, 500 out": (500 * model.input_per_m + 500 * model.output_per_m) / m,
        "0 in, 1,000 out": 1000 * model.output_per_m / m,
    }


def units_table(runs: dict[str, Measured]) -> str:
    purposes = sorted({k for m in runs.values() for k in (*m.wru, *m.writes)})
    rows = []
    for purpose in purposes:
        rows.append(
            [purpose]
            + [
                f"{m.per_job(m.writes.get(purpose, 0)):.3f} req, "
                f"{m.per_job(m.wru.get(purpose, 0)):.2f} WRU"
                for m in runs.values()
            ]
        )
    rows.append(
        ["**all writes**"]
        + [
            f"{m.per_job(m.aws('dynamodb', DDB_WRITES)):.2f} req, "
            f"{m.per_job(sum(m.wru.values())):.2f} WRU"
            for m in runs.values()
        ]
    )
    rows.append(
        ["**reads (RRU)**"] + [f"{m.per_job(sum(m.rru.values())):.2f}" for m in runs.values()]
    )
    return table(rows, ["DynamoDB per job (writes by item kind)", *runs])


def cost_table(m: Measured, llm: Decimal) -> str:
    latencies: list[float | None] = [None, *PROJECTED_LATENCY_S]
    bills = [m.bill(latency) for latency in latencies]
    million = Decimal(1_000_000)
    rows = [[service] + [f"${b[service] * million:,.2f}" for b in bills] for service in bills[0]]
    totals = [sum(b.values(), Decimal(0)) * million for b in bills]
    rows.append(["**infrastructure**"] + [f"**${t:,.2f}**" for t in totals])
    rows.append(["÷ LLM bill"] + [f"{t / (llm * million):.2%}" for t in totals])
    header = [
        f"USD per 1M jobs ({m.mode})",
        f"measured ({LATENCY_MS} ms answers)",
        *(f"answers of {s:g} s" for s in PROJECTED_LATENCY_S),
    ]
    return table(rows, header)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--jobs", type=int, default=None, help="jobs per run (default 300)")
    p.add_argument("--modes", nargs="+", choices=list(MODES), help="runs to make (default all)")
    args = p.parse_args()
    jobs = args.jobs or (100 if args.quick else 300)
    modes = args.modes or list(MODES)
    section = Section("overhead", "4. Overhead and cost")
    llm = llm_cost_per_job()
    reference = llm["500 in, 500 out"]
    figs: dict[str, list[Figure]] = {}
    last: dict[str, Measured] = {}
    for mode in modes:
        figs[mode] = [
            Figure(f"AWS requests per job ({mode})", "", False, fmt="{:.2f}"),
            Figure(f"DynamoDB write requests per job ({mode})", "", False, fmt="{:.2f}"),
            Figure(f"DynamoDB WRU per job ({mode})", "", False, fmt="{:.2f}"),
            Figure(f"limiter writes per job ({mode})", "", False, fmt="{:.3f}"),
            Figure(f"GB-s per job at {LATENCY_MS} ms ({mode})", "", False, fmt="{:.4f}"),
            Figure(f"invocation overhead beyond the answer ({mode})", "", False, " s", "{:.3f}"),
            Figure(f"worker CPU per job ({mode})", "", False, " ms", "{:.1f}"),
            Figure(f"jobs per invocation ({mode})", "", False, fmt="{:.1f}"),
            Figure(
                f"infrastructure ÷ LLM bill, answers of 5 s ({mode})",
                "< 2%",
                False,
                "%",
                "{:.2f}",
            ),
        ]
    with workdir(args) as tmp:
        for r in range(args.repeat):
            for mode in modes:
                m = measured_run(tmp / f"r{r}", jobs, mode, seed=r)
                last[mode] = m
                values = [
                    m.per_job(sum(m.run.aws.values())),
                    m.per_job(m.aws("dynamodb", DDB_WRITES)),
                    m.per_job(sum(m.wru.values())),
                    m.per_job(m.writes.get("limiter", 0)),
                    m.gb_s / m.jobs,
                    m.overhead_s,
                    1000 * m.cpu_s / m.jobs,
                    m.jobs / len(m.durations),
                    float(100 * sum(m.bill(5.0).values()) / reference),
                ]
                for fig, value in zip(figs[mode], values, strict=True):
                    fig.add(value)
                say(
                    f"{mode} run {r + 1}: {m.jobs} jobs in {m.run.wall_s:.1f} s, "
                    f"{len(m.durations)} invocations, "
                    + ", ".join(
                        f"{f.name.split(' (')[0]} {f.fmt.format(v)}"
                        for f, v in zip(figs[mode], values, strict=True)
                    )
                )
    section.add(
        f"{jobs} jobs per run, {LATENCY_MS} ms per answer, no rate limit in the way; "
        "requests counted from submit to the last job settled (setup, the runtime's own "
        "progress polls and the collection of outputs left out)."
    )
    section.add(figures_table([f for mode in modes for f in figs[mode]]))
    section.add(ops_table({mode: (m.run.aws, m.jobs) for mode, m in last.items()}))
    section.add(units_table(last))
    llm_rows = [[split, f"${usd * 1_000_000:,.0f}"] for split, usd in llm.items()]
    section.add(table(llm_rows, ["LLM bill per 1M jobs of 1,000 tokens (deepseek-chat)", "USD"]))
    for mode in modes:
        if mode != "no leases":
            section.add(cost_table(last[mode], reference))
    finish(section, args)


if __name__ == "__main__":
    main()
