"""Hot items: the DynamoDB write units per job that land on the hottest single item of each
kind, and the jobs/s at which that item reaches DynamoDB's 1,000 WCU/s per item.

A realistic file (``bench._mix``: all four priorities, both line forms) split into several
batches (one of them under its own budget, as ``submit --budget-usd`` makes it) runs at
full speed through the local runtime: the default config, moto in-process, the simulator on
loopback answering in a few ms, the rate limit far above what one machine sends. Every
DynamoDB write is recorded with its item and its write units (``bench._capacity``: 1 WRU per
started KB, 2 in a transaction, refused writes included) and given a kind by its key
(``bench._item_kinds``). For each kind::

    WCU per job  = WRU on the hottest item of the kind / the jobs that share that item
                   (every job for the day's ledger and the limiter, the batch's jobs for a
                   batch's items, one for a job's own items)
    ceiling      = 1,000 WCU/s / WCU per job   (jobs/s; unbounded for a job's own items)

The deployment's ceiling is the lowest of them. The peak WCU/s one item took in any
one-second window of the run is printed as a sanity figure (it is this machine's rate times
the WCU per job, not a limit).

Each run is made twice: with the shipped config, and with the same config planned for
``--target`` jobs/s (``[scale] target_jobs_per_s``: the hot kinds sharded as
``core/scale.py`` says), so the section shows both ceilings; ``--target 0`` runs the
shipped config only. The write units every job costs the whole table (all its items) are
printed too: ``core/sizing.py`` sizes the table-level quota with them::

    python -m bench.bench_hot_items [--jobs 300] [--batches 4] [--target 8000] [--repeat 2]
        [--quick]
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import boto3

from bench._capacity import ItemKey, Write, metered
from bench._common import (
    ROOT,
    Figure,
    Section,
    figures_table,
    finish,
    parser,
    runtime,
    say,
    table,
    workdir,
)
from bench._item_kinds import UNCLASSIFIED, Kind, Scope, kind_of
from bench._mix import write_mix
from chatbatch.client.submit import Plan, register
from chatbatch.core import scale
from chatbatch.core.pricing import to_nanos
from chatbatch.core.sizing import TABLE_WRU_PER_JOB
from chatbatch.local.options import LocalOptions
from chatbatch.local.simulator import SimulatorSettings
from chatbatch.state.batches import Batches, BatchInfo

ITEM_WCU_S = 1_000  # DynamoDB: one item (one partition) takes 1,000 write units a second
LATENCY_MS = 5
BATCH_BUDGET_USD = Decimal(50)  # the budgeted batch's limit: far above what it spends
WINDOW_S = 1.0
ALL_ITEMS = "*"  # the sort key of a partition key's row: every item under it
DEFAULT_TARGET = 8_000.0  # jobs/s the scaled config is planned for: shards at batches of 40


# --- the model ----------------------------------------------------------------------


@dataclass
class KindRow:
    """One kind's hottest item, what each job writes to it, and the ceiling that sets."""

    kind: str
    scope: Scope
    items: int  # distinct items of the kind written
    writes: int  # item writes (a transaction's items one each)
    wru: int  # all the kind's write units
    hottest: ItemKey
    hottest_wru: int
    jobs: int  # the jobs that share the hottest item
    peak_wcu_s: int  # measured: the most WRU one item took in one window
    peak_writes_s: int

    @property
    def wcu_per_job(self) -> float:
        return self.hottest_wru / self.jobs if self.jobs else math.inf

    @property
    def ceiling(self) -> float:
        """Jobs/s at which the hottest item takes ``ITEM_WCU_S``; inf for a job's own items
        (more jobs a second spread over more items)."""
        if self.scope is Scope.JOB:
            return math.inf
        return ITEM_WCU_S / self.wcu_per_job if self.wcu_per_job else math.inf


@dataclass
class HotModel:
    rows: list[KindRow]  # one per item kind
    partitions: list[KindRow] = field(default_factory=list)  # partition keys of many items
    unclassified: list[Write] = field(default_factory=list)
    jobs: int = 0

    def row(self, kind: str) -> KindRow:
        return next(r for r in self.rows if r.kind == kind)

    @property
    def limiting(self) -> KindRow:
        """The kind whose hottest item caps the deployment first."""
        return min(self.rows, key=lambda r: r.ceiling)

    @property
    def table_wru_per_job(self) -> float:
        """Write units each job costs the table over all its items, unclassified included."""
        wru = sum(r.wru for r in self.rows) + sum(w.wru for w in self.unclassified)
        return wru / self.jobs if self.jobs else math.nan

    def verdict(self, label: str = "default config") -> str:
        worst = self.limiting
        pk, sk = worst.hottest
        text = (
            f"Ceiling of one deployment ({label}): {fmt_ceiling(worst.ceiling)} jobs/s, "
            f"set by the {worst.kind} ({pk} / {sk}: {worst.wcu_per_job:.2f} WCU per job "
            f"reach {ITEM_WCU_S:,} WCU/s there)."
        )
        below = [p for p in self.partitions if p.ceiling < worst.ceiling]
        for p in below:
            text += (
                f" Lower still until DynamoDB splits a hot partition by sort key: the "
                f"{p.kind} {p.hottest[0]} ({p.wcu_per_job:.2f} WCU per job over all its "
                f"items: {fmt_ceiling(p.ceiling)} jobs/s)."
            )
        return text


def jobs_sharing(scope: Scope, batch: str | None, jobs: int, batch_jobs: Mapping[str, int]) -> int:
    if scope is Scope.JOB:
        return 1
    if scope is Scope.BATCH:
        return batch_jobs.get(batch or "", 0)
    return jobs


def peaks(writes: Sequence[Write], item: Callable[[Write], ItemKey]) -> tuple[int, int]:
    """The most WRU and writes one item took in one ``WINDOW_S`` window."""
    if not writes:
        return 0, 0
    start = min(w.at for w in writes)
    wru: Counter[tuple[ItemKey, int]] = Counter()
    count: Counter[tuple[ItemKey, int]] = Counter()
    for w in writes:
        window = (item(w), int((w.at - start) // WINDOW_S))
        wru[window] += w.wru
        count[window] += 1
    return max(wru.values()), max(count.values())


def _item(w: Write) -> ItemKey:
    return w.key


def _partition(w: Write) -> ItemKey:
    return w.pk, ALL_ITEMS


def sharing(kind: Kind, jobs: int, batch_jobs: Mapping[str, int]) -> Callable[[ItemKey], int]:
    """How many jobs share an item of ``kind`` (by its key)."""
    return lambda key: jobs_sharing(kind.scope, kind.batch_of(key[0]), jobs, batch_jobs)


def shared_by(jobs: int) -> Callable[[ItemKey], int]:
    """Every item (partition key) shared by the same ``jobs``."""
    return lambda _key: jobs


def _row(
    name: str,
    scope: Scope,
    writes: Sequence[Write],
    item: Callable[[Write], ItemKey],
    sharing: Callable[[ItemKey], int],
) -> KindRow:
    """The hottest of the items ``item`` groups ``writes`` into, by WRU per job sharing it."""
    per_item: Counter[ItemKey] = Counter()
    for w in writes:
        per_item[item(w)] += w.wru
    hottest = max(per_item, key=lambda k: per_item[k] / max(sharing(k), 1))
    peak_wcu, peak_writes = peaks(writes, item)
    return KindRow(
        kind=name,
        scope=scope,
        items=len(per_item),
        writes=len(writes),
        wru=sum(per_item.values()),
        hottest=hottest,
        hottest_wru=per_item[hottest],
        jobs=sharing(hottest),
        peak_wcu_s=peak_wcu,
        peak_writes_s=peak_writes,
    )


def hot_model(writes: Sequence[Write], jobs: int, batch_jobs: Mapping[str, int]) -> HotModel:
    """Each kind's hottest item from every write of a run of ``jobs`` jobs (``batch_jobs``:
    jobs per batch id), and for a kind whose items share a partition key, its hottest
    partition key. Writes no kind claims are kept aside (``unclassified``)."""
    by_kind: defaultdict[Kind, list[Write]] = defaultdict(list)
    unclassified = []
    for w in writes:
        kind = kind_of(w.pk, w.sk)
        if kind is None:
            unclassified.append(w)
        else:
            by_kind[kind].append(w)
    rows: list[KindRow] = []
    partitions: list[KindRow] = []
    for kind, kind_writes in by_kind.items():
        rows.append(
            _row(kind.name, kind.scope, kind_writes, _item, sharing(kind, jobs, batch_jobs))
        )
        if kind.partition is not None:
            every = jobs_sharing(kind.partition, None, jobs, batch_jobs)
            name = f"{kind.name}s' partition key"
            partitions.append(_row(name, kind.partition, kind_writes, _partition, shared_by(every)))
    rows.sort(key=lambda r: (r.ceiling, -r.wcu_per_job))
    return HotModel(rows=rows, partitions=partitions, unclassified=unclassified, jobs=jobs)


def fmt_ceiling(value: float) -> str:
    return "unbounded" if math.isinf(value) else f"{value:,.0f}"


def model_table(model: HotModel) -> str:
    rows = [
        [
            r.kind,
            r.scope.value,
            f"{r.items:,}",
            f"{r.writes / model.jobs:.2f}",
            f"{r.wru / model.jobs:.2f}",
            f"`{r.hottest[0]} / {r.hottest[1]}`",
            f"{r.wcu_per_job:.3f}",
            fmt_ceiling(r.ceiling),
            f"{r.peak_wcu_s} WCU/s, {r.peak_writes_s} writes/s",
        ]
        for r in [*model.rows, *model.partitions]
    ]
    if model.unclassified:
        wru = sum(w.wru for w in model.unclassified)
        rows.append([UNCLASSIFIED, "", "", "", f"{wru / model.jobs:.2f}", "", "", "", ""])
    header = [
        "item kind",
        "one item serves",
        "items",
        "item writes per job",
        "WRU per job (all items)",
        "hottest item",
        "WCU per job on it",
        "ceiling (jobs/s)",
        "measured peak on one item (1-s windows)",
    ]
    return table(rows, header)


# --- a run --------------------------------------------------------------------------


@dataclass
class Measured:
    writes: list[Write]
    jobs: int
    batch_jobs: dict[str, int]
    wall_s: float
    infos: list[BatchInfo]

    @property
    def model(self) -> HotModel:
        return hot_model(self.writes, self.jobs, self.batch_jobs)

    @property
    def unfinished(self) -> int:
        return self.jobs - sum(i.succeeded for i in self.infos)


def split_mix(tmp: Path, jobs: int, batches: int, seed: int) -> list[tuple[str, Path]]:
    """``jobs`` realistic jobs (every priority) cut into ``batches`` files, in order."""
    whole = write_mix(tmp / "mix.jsonl", jobs, seed=seed).read_text().splitlines(keepends=True)
    size = math.ceil(jobs / batches)
    files = []
    for b in range(batches):
        part = whole[b * size : (b + 1) * size]
        if part:
            path = tmp / f"batch{b}.jsonl"
            path.write_text("".join(part))
            files.append((f"hot-{seed}-{b}", path))
    return files


def scaled_config(tmp: Path, target: float) -> Path:
    """The shipped config planned for ``target`` jobs/s (its ``[scale]`` table added)."""
    text = (ROOT / "chatbatch.toml").read_text()
    if "[scale]" in text:
        raise SystemExit("chatbatch.toml has a [scale] table already: plan from a copy of it")
    path = tmp / f"chatbatch-{target:g}.toml"
    path.write_text(f"{text}\n[scale]\ntarget_jobs_per_s = {target!r}\n")
    return path


def measured_run(
    tmp: Path,
    jobs: int,
    batches: int,
    *,
    seed: int = 0,
    timeout_s: float = 900,
    config_path: Path | None = None,
) -> Measured:
    """Run ``jobs`` jobs in ``batches`` batches at once (the first under its own budget) and
    record every DynamoDB write from the first submit to the last batch settled
    (``config_path``: the config the runtime runs; default the shipped one)."""
    tmp.mkdir(parents=True, exist_ok=True)
    files = split_mix(tmp, jobs, batches, seed)
    options = LocalOptions(
        config_path=config_path,
        rpm=1_000_000,
        tpm=1_000_000_000,
        simulator=SimulatorSettings(latency_ms=LATENCY_MS),
        seed=seed,
        timeout_s=timeout_s,
        log_file=tmp / "worker.log",
    )
    with runtime(options) as rt, metered() as meter:
        # the runtime's own client was made before the meter's hooks (a client copies them)
        shards = scale.plan(rt.config).counter_shards
        rt.batches = Batches(boto3.client("dynamodb"), rt.resources.table, counter_shards=shards)
        meter.start()
        started = time.monotonic()
        plans: list[Plan] = []
        for n, (batch_id, path) in enumerate(files):
            plan = rt.submit(path, batch_id)
            if n == 0:  # what `submit --budget-usd` registers
                register(plan, rt.batches, budget_nanos=to_nanos(BATCH_BUDGET_USD))
            plans.append(plan)
        infos = [rt.wait(plan) for plan in plans]
        wall = time.monotonic() - started
        meter.stop()
        writes = list(meter.log)
    batch_jobs = {plan.batch_id: plan.valid for plan in plans}
    return Measured(writes, sum(batch_jobs.values()), batch_jobs, wall, infos)


@dataclass
class Variant:
    """One config the benchmark runs, and the figures its runs add to."""

    label: str
    config_path: Path | None
    ceiling: Figure
    ledger: Figure
    table_wru: Figure
    last: Measured | None = None


def variants(tmp: Path, target: float) -> list[Variant]:
    plans: list[tuple[str, Path | None, str]] = [("default config", None, "")]
    if target > 0:
        label = f"scaled config, target {target:,g}"
        # the target with no item above half its limit: the ceiling at the full limit twice it
        goal = f"≥ {2 * target:,g} ({target:,g} at half the limit)"
        plans.append((label, scaled_config(tmp, target), goal))
    return [
        Variant(
            label,
            path,
            Figure(f"deployment ceiling ({label})", goal, True, " jobs/s", "{:,.0f}"),
            Figure(
                f"day's ledger WCU per job on its hottest item ({label})", "", False, fmt="{:.3f}"
            ),
            Figure(
                f"table WRU per job, all items ({label})",
                f"≤ {TABLE_WRU_PER_JOB:g} (core/sizing.py)",
                False,
                fmt="{:.2f}",
            ),
        )
        for label, path, goal in plans
    ]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--jobs", type=int, default=None, help="jobs per run (default 300)")
    p.add_argument("--batches", type=int, default=4, help="batches per run (default 4)")
    p.add_argument(
        "--target",
        type=float,
        default=DEFAULT_TARGET,
        help="jobs/s of the scaled config run next to the default one (0: default only)",
    )
    args = p.parse_args()
    jobs = args.jobs or (80 if args.quick else 300)
    section = Section("hot_items", "Hot items: write units per DynamoDB item, and the ceiling")
    with workdir(args) as tmp:
        runs = variants(tmp, args.target)
        for r in range(args.repeat):
            for n, v in enumerate(runs):
                m = measured_run(
                    tmp / f"r{r}-{n}", jobs, args.batches, seed=r, config_path=v.config_path
                )
                model = m.model
                v.ceiling.add(model.limiting.ceiling)
                v.table_wru.add(model.table_wru_per_job)
                if any(row.kind == "day's budget ledger" for row in model.rows):
                    v.ledger.add(model.row("day's budget ledger").wcu_per_job)
                say(
                    f"run {r + 1}, {v.label}: {m.jobs} jobs in {len(m.batch_jobs)} batches, "
                    f"{m.wall_s:.1f} s ({m.jobs / m.wall_s:.1f} jobs/s), {len(m.writes):,} "
                    f"item writes, {m.unfinished} not succeeded, {len(model.unclassified)} "
                    "unclassified. " + model.verdict(v.label)
                )
                v.last = m
    section.add(
        f"{jobs} realistic jobs per run (every priority, both line forms) in {args.batches} "
        f"batches submitted together (the first under its own budget), the simulator "
        f"answering in {LATENCY_MS} ms and no rate limit in the way; every DynamoDB write "
        "from the first submit to the last batch settled, refused ones included (1 WRU per "
        "started KB of the larger of the item before and after, 2 in a transaction). Each "
        "run is made with the shipped config and, with `--target`, with the same config "
        "planned for that rate (`[scale] target_jobs_per_s`: the hot kinds sharded as "
        "`chatbatch scale` shows)."
    )
    for v in runs:
        assert v.last is not None
        section.add(f"The last run of {args.repeat}, {v.label}:")
        section.add(model_table(v.last.model))
    figures = [f for v in runs for f in (v.ceiling, v.ledger, v.table_wru)]
    section.add(figures_table(figures))
    for v in runs:
        assert v.last is not None
        section.add(v.last.model.verdict(v.label))
    finish(section, args)


if __name__ == "__main__":
    main()
