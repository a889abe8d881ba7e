"""The batch route against the synchronous route (issue 17): the same ``low`` jobs through
OpenAI's Batch API (the simulator's, at the batch prices) and through the synchronous
workers, on the same simulator settings, each route in a runtime of its own.

The jobs are the realistic mix (``bench._mix``: prompts of 10 to 400 words, ``max_tokens``
32 to 200, both line forms) on ``gpt-4.1`` (``batch_api = "openai"``), none streamed (a
batch API takes no streamed request). The batch run uses the shipped config with ``low``'s
``deadline_h`` at 24, as once the route is deployed, and ``submit --route auto``; the
synchronous run ``--route sync``. Reported for each route:

- the LLM cost, from the ledger and from the cost records, and their ratio batch ÷ sync
  (target 0.50: the batch prices are half the synchronous ones);
- AWS requests and DynamoDB write requests and write units per job, counted as
  ``bench_overhead`` counts them (from submit to the last job settled; the runtime's own
  progress polls and the collection of outputs left out);
- the wall time, and wall ÷ ideal. The batch route's ideal is the provider's turnaround,
  plus one gather period (the timer fires on the period's boundary: up to a period before
  the jobs are gathered and up to one after the provider batch ended, half of each on
  average), plus the gatherer's own work (the passes that gathered or ingested). The
  synchronous route's ideal is the jobs at the rate limit given (``--rpm``, far above
  what one local process does, so its ratio shows this machine, not the limit).

One run per route (``--repeat`` is taken and ignored: at the issue's size each route's
run is minutes long). ``--routes batch`` runs one route alone, for development, with
``--profile`` (cProfile of the gatherer's passes; it slows them about threefold). Where a
gatherer pass spends its time is printed in any case, cheaply: each AWS request it makes
timed by operation (botocore's hooks), the rest its own code and the simulator's API.

The books are checked, and a failure raises: every job one result and one cost record on
its route, nothing reserved at the end, and the ledger's spent == the cost records' sum ==
the simulator's bill at each route's prices::

    python -m bench.bench_batch_route [--jobs 10000] [--turnaround-s 60] [--gather-every-s 5]
                                      [--rpm 60000] [--routes batch sync] [--profile]
                                      [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench._capacity import metered
from bench._common import (
    RunResult,
    Section,
    base_config,
    finish,
    ops_table,
    parser,
    patched,
    run_file,
    runtime,
    say,
    table,
    workdir,
    write_config,
)
from bench._mix import write_mix
from bench.bench_money import billed_usd
from bench.bench_overhead import DDB_WRITES
from chatbatch.batchroute import handler as gatherer
from chatbatch.client.submit import Plan
from chatbatch.core.config import Config, Priority
from chatbatch.core.routing import ROUTE_KINDS, RouteKind
from chatbatch.local import sessions
from chatbatch.local.options import LocalOptions
from chatbatch.local.simulator import SimulatorSettings
from chatbatch.state.batches import BatchInfo

MODEL = "gpt-4.1"  # batch_api = "openai" in the shipped config
JOBS = 10_000
TURNAROUND_S = 60.0  # the simulated turnaround
GATHER_EVERY_S = 5.0  # the local timer's period (deployed: every GATHER_EVERY_MIN minutes)
RPM = 60_000  # 1,000 requests/s: the rate limit is not what bounds the synchronous run
TPM = 1_000_000_000
TARGET_RATIO = Decimal("0.50")
# the batch route first: the figures this benchmark is for, kept if the run is cut short
ORDER: tuple[RouteKind, ...] = ("batch", "sync")


# --- the gatherer's passes -----------------------------------------------------------


@dataclass(frozen=True)
class TimedPass:
    """One invocation of the gatherer: when (epoch seconds), how long, what it did, and
    how long its AWS requests took by operation (moto's work here: the rest is the
    gatherer's own, and its calls to the simulator)."""

    started: float
    seconds: float
    done: gatherer.Pass
    aws_s: dict[str, float] = field(default_factory=dict)  # "service Op" -> seconds
    aws_calls: Counter[str] = field(default_factory=Counter)

    @property
    def gathered(self) -> int:
        return self.done.gathered.jobs

    @property
    def ingested(self) -> int:
        i = self.done.ingested
        return i.succeeded + i.failed + i.to_sync

    @property
    def worked(self) -> bool:
        """It gathered, ingested or closed something (not a pass that only polled)."""
        g = self.done.gathered
        return bool(g.jobs or g.to_sync or g.deferred or self.ingested or self.done.ingested.parts)


class AwsTimer:
    """The time of each AWS request the gatherer's thread makes, by operation: botocore's
    ``before-call`` / ``after-call`` hooks on the default session, kept per thread (only
    a thread that ``begin``s is timed, so the workers' requests are left out)."""

    def __init__(self) -> None:
        self.local = threading.local()

    def install(self) -> None:
        sessions.register("before-call", self._before)
        sessions.register("after-call", self._after)

    def begin(self) -> None:
        self.local.seconds, self.local.calls = {}, Counter()

    def end(self) -> tuple[dict[str, float], Counter[str]]:
        seconds, calls = self.local.seconds, self.local.calls
        self.local.seconds = self.local.calls = None
        return seconds, calls

    def _before(self, context: dict[str, Any], **_: Any) -> None:
        context["bench_timer_t0"] = time.monotonic()

    def _after(self, model: Any, context: dict[str, Any], **_: Any) -> None:
        seconds = getattr(self.local, "seconds", None)
        if seconds is None or "bench_timer_t0" not in context:
            return
        op = f"{model.service_model.service_name} {model.name}"
        seconds[op] = seconds.get(op, 0.0) + time.monotonic() - context["bench_timer_t0"]
        self.local.calls[op] += 1


@dataclass
class PassLog:
    passes: list[TimedPass] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # set: the next pass builds its clients anew (the gatherer keeps those of its first
    # pass, made when the runtime starts, before the capacity meter's hooks are on the
    # session: a botocore client sees only the hooks registered before it was made)
    renew: threading.Event = field(default_factory=threading.Event)
    timer: AwsTimer = field(default_factory=AwsTimer)

    def install(self) -> None:
        """Once the runtime is up: time the gatherer's requests from its next pass on."""
        self.timer.install()
        self.renew.set()

    def add(self, timed: TimedPass) -> None:
        with self.lock:
            self.passes.append(timed)

    def since(self, started: float) -> list[TimedPass]:
        with self.lock:
            return [p for p in self.passes if p.started >= started]

    def parts_closed(self) -> bool:
        """Every part opened so far is done (its money closed), and there was one."""
        with self.lock:
            opened = sum(len(p.done.gathered.parts) for p in self.passes)
            closed = sum(len(p.done.ingested.parts) for p in self.passes)
        return closed >= opened > 0


@contextmanager
def logged_passes(profile: cProfile.Profile | None = None) -> Iterator[PassLog]:
    """Wrap the gatherer's pass (``batchroute.handler.run``, on the schedule's thread):
    time each one, and profile it if ``profile`` is given (cProfile sees the thread it is
    enabled on, so only the gatherer's work is in it)."""
    log = PassLog()
    original, original_handler = gatherer.run, gatherer.handler

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        if log.renew.is_set():
            log.renew.clear()
            gatherer._local.services = None  # on this (the schedule's) thread
        return original_handler(event, context)

    def run(*args: Any, **kwargs: Any) -> gatherer.Pass:
        started, clock = time.time(), time.monotonic()
        log.timer.begin()
        if profile is not None:
            profile.enable()
        try:
            done = original(*args, **kwargs)
        finally:
            if profile is not None:
                profile.disable()
            aws_s, aws_calls = log.timer.end()
        log.add(TimedPass(started, time.monotonic() - clock, done, aws_s, aws_calls))
        return done

    with patched((gatherer, "run", run), (gatherer, "handler", handler)):
        yield log


# --- one route's run -----------------------------------------------------------------


@dataclass
class RouteRun:
    route: RouteKind
    jobs: int
    run: RunResult
    config: Config
    wru: Counter[str]
    passes: list[TimedPass]  # the gatherer's passes from submit to the end
    ideal_s: float

    def per_job(self, value: float) -> float:
        return value / self.jobs

    @property
    def aws_requests(self) -> int:
        return sum(self.run.aws.values())

    @property
    def ddb_writes(self) -> int:
        return sum(n for (s, op), n in self.run.aws.items() if s == "dynamodb" and op in DDB_WRITES)

    @property
    def cost_usd(self) -> Decimal:
        return self.run.facts.cost_sum

    @property
    def billed_usd(self) -> Decimal:
        """What the simulator billed, each call at its route's prices."""
        stats = self.run.stats
        assert stats is not None
        return billed_usd(stats, self.config) + billed_usd(stats, self.config, batch=True)

    @property
    def work_s(self) -> float:
        return sum(p.seconds for p in self.passes if p.worked)

    @property
    def submit_s(self) -> float:
        return max(self.run.sent_at.values(), default=self.run.submitted_at) - (
            self.run.submitted_at
        )


class BooksError(AssertionError):
    """The route's books do not balance: the benchmark's figures mean nothing."""


def check_books(r: RouteRun) -> None:
    """Every job one result and one cost record on its route; nothing left reserved; the
    ledger's spent == the cost records' sum == the simulator's bill at each route's prices.
    Raises ``BooksError`` naming what differs."""
    f, s = r.run.facts, r.run.summary
    problems = []
    if not (s.succeeded == f.results == f.cost_records == f.cost_ids == r.jobs):
        problems.append(
            f"{r.jobs} jobs: {s.succeeded} succeeded, {f.results} results, "
            f"{f.cost_records} cost records for {f.cost_ids} jobs"
        )
    if s.failed or s.dead_lettered or f.dlq or f.unread_records:
        problems.append(
            f"{s.failed} failed, {s.dead_lettered} dead-lettered, {f.dlq} in a DLQ, "
            f"{f.unread_records} calls booked unread"
        )
    routes = Counter(c.get("route", "sync") for c in r.run.costs)
    if routes != {r.route: r.jobs}:
        problems.append(f"cost records by route {dict(routes)}, not all {r.route}")
    if f.ledger_reserved != 0:
        problems.append(f"the ledger still holds {f.ledger_reserved} USD reserved")
    if not (f.ledger_spent == f.cost_sum == r.billed_usd):
        problems.append(
            f"ledger spent {f.ledger_spent} USD, cost records {f.cost_sum} USD, "
            f"simulator's bill {r.billed_usd} USD"
        )
    if problems:
        raise BooksError(f"the {r.route} route's books: " + "; ".join(problems))


@dataclass(frozen=True)
class Settings:
    jobs: int = JOBS
    turnaround_s: float = TURNAROUND_S
    gather_every_s: float = GATHER_EVERY_S
    rpm: int = RPM
    seed: int = 0


def route_config(tmp: Path) -> Path:
    """The shipped config with ``low`` jobs allowed 24 h (the batch route's deployed default)."""
    config = base_config()
    low = config.priorities[Priority.low].model_dump(mode="json") | {"deadline_h": 24}
    return write_config(tmp / "config.json", config, priorities={"low": low})


def route_run(
    tmp: Path, route: RouteKind, settings: Settings, profile: cProfile.Profile | None = None
) -> RouteRun:
    """The mix through one route, in a runtime of its own, measured."""
    path = write_mix(
        tmp / "jobs.jsonl", settings.jobs, priorities=["low"], model=MODEL, streamed=0.0
    )
    options = LocalOptions(
        config_path=route_config(tmp),
        rpm=settings.rpm,
        tpm=TPM,
        seed=settings.seed,
        timeout_s=3600,
        gather_every_s=settings.gather_every_s,
        simulator=SimulatorSettings(batch_turnaround_s=settings.turnaround_s),
    )
    with logged_passes(profile) as log, runtime(options) as rt, metered() as meter:

        def ended(info: BatchInfo, plan: Plan) -> bool:
            """Every job final and, on the batch route, every part closed (its money and
            record written after the last job's counters)."""
            settled = info.finished >= plan.valid
            return settled and (route == "sync" or log.parts_closed())

        log.install()
        meter.start()
        run = run_file(
            rt,
            path,
            tmp / f"out-{route}",
            batch_id=f"{route}-route",
            until=ended,
            on_settled=meter.stop,
            route="sync" if route == "sync" else "auto",
        )
        passes = log.since(run.submitted_at)
        config = rt.config
    r = RouteRun(route, settings.jobs, run, config, Counter(meter.wru), passes, 0.0)
    r.ideal_s = (
        settings.turnaround_s + settings.gather_every_s + r.work_s
        if route == "batch"
        else settings.jobs * 60 / settings.rpm
    )
    check_books(r)
    return r


def compare(
    tmp: Path,
    settings: Settings,
    profile: cProfile.Profile | None = None,
    routes: Sequence[RouteKind] = ORDER,
) -> dict[RouteKind, RouteRun]:
    """The routes over the same jobs (the batch route profiled if asked), each one's
    figures printed as soon as it ends (a run cut short still leaves them)."""
    runs: dict[RouteKind, RouteRun] = {}
    for route in routes:
        r = route_run(tmp / route, route, settings, profile if route == "batch" else None)
        runs[route] = r
        say(f"{route}: {r.jobs} jobs in {r.run.wall_s:.1f} s, books exact")
        say(routes_table({route: r}) + "\n")
        if route == "batch":
            say(timeline(r, settings) + "\n")
            say(pass_times(r) + "\n")
    return runs


def ratio(runs: dict[RouteKind, RouteRun]) -> Decimal:
    return runs["batch"].cost_usd / runs["sync"].cost_usd


# --- the report ----------------------------------------------------------------------


def routes_table(runs: dict[RouteKind, RouteRun]) -> str:
    rows = []
    for r in runs.values():
        f = r.run.facts
        rows.append(
            [
                r.route,
                f"{r.jobs:,}",
                f"${f.ledger_spent:,.4f}",
                f"${f.cost_sum:,.4f}",
                f"${r.billed_usd:,.4f}",
                f"{r.per_job(r.aws_requests):.3f}",
                f"{r.per_job(r.ddb_writes):.3f}",
                f"{r.per_job(sum(r.wru.values())):.3f}",
                f"{r.run.wall_s:,.1f} s",
                f"{r.ideal_s:,.1f} s",
                f"{r.run.wall_s / r.ideal_s:.2f}" if r.ideal_s else "n/a",
            ]
        )
    header = [
        "route",
        "jobs",
        "LLM cost (ledger)",
        "LLM cost (cost records)",
        "simulator's bill",
        "AWS requests / job",
        "DynamoDB write requests / job",
        "DynamoDB WRU / job",
        "wall",
        "ideal",
        "wall ÷ ideal",
    ]
    return table(rows, header)


def wru_table(runs: dict[RouteKind, RouteRun]) -> str:
    """Write units per job by item kind (a transaction's under ``txn:<kind>``)."""
    kinds = sorted({k for r in runs.values() for k in r.wru})
    rows = [
        [kind] + [f"{r.per_job(r.wru.get(kind, 0)):.3f}" for r in runs.values()] for kind in kinds
    ]
    return table(rows, ["DynamoDB WRU per job, by item kind", *runs])


def timeline(r: RouteRun, settings: Settings) -> str:
    """Where the batch route's wall time went, from submit."""
    t0 = r.run.submitted_at
    rows = [["submit (the jobs onto the batch queue)", "0.0", f"{r.submit_s:.1f}", ""]]
    for p in r.passes:
        if not p.worked:
            continue
        what = []
        if p.gathered:
            what.append(f"gathered {p.gathered:,} jobs into {len(p.done.gathered.parts)} part(s)")
        if p.ingested:
            what.append(f"ingested {p.ingested:,} jobs")
        if p.done.ingested.parts:
            what.append(f"closed {len(p.done.ingested.parts)} part(s)")
        rows.append(
            [
                "gatherer pass: " + ", ".join(what),
                f"{p.started - t0:.1f}",
                f"{p.seconds:.1f}",
                f"{r.per_job(p.seconds) * 1000:.2f} ms/job",
            ]
        )
    idle = sum(1 for p in r.passes if not p.worked)
    rows.append(
        [
            f"passes that only polled: {idle}",
            "",
            f"{sum(p.seconds for p in r.passes if not p.worked):.1f} (all)",
            "",
        ]
    )
    rows.append(
        ["provider turnaround (simulated, configured)", "", f"{settings.turnaround_s:g}", ""]
    )
    rows.append(["end (every job final, the part closed)", f"{r.run.wall_s:.1f}", "", ""])
    return table(rows, ["batch route, from submit", "at s", "took s", ""])


def pass_times(r: RouteRun, top: int = 8) -> str:
    """Where each working pass of the gatherer spent its time: its AWS requests (moto's
    work here) by operation, the slowest first, and the rest (the gatherer's own code,
    its calls to the simulator, botocore)."""
    worked = [p for p in r.passes if p.worked]
    total: dict[str, float] = {}
    for p in worked:
        for op, seconds in p.aws_s.items():
            total[op] = total.get(op, 0.0) + seconds
    shown = sorted(total, key=total.__getitem__, reverse=True)[:top]
    rows = [
        [op] + [f"{p.aws_s.get(op, 0.0):.1f} s ({p.aws_calls.get(op, 0):,})" for p in worked]
        for op in shown
    ]
    rows.append(
        ["other AWS requests"]
        + [f"{sum(s for op, s in p.aws_s.items() if op not in shown):.1f} s" for p in worked]
    )
    rows.append(
        ["not in an AWS request (the gatherer's code, the simulator's API, botocore)"]
        + [f"{p.seconds - sum(p.aws_s.values()):.1f} s" for p in worked]
    )
    rows.append(["**the pass**"] + [f"**{p.seconds:.1f} s**" for p in worked])
    header = ["gatherer's time in (requests)"] + [
        "gather" if p.gathered else "ingest" if p.ingested else "pass" for p in worked
    ]
    return table(rows, header)


def profile_text(profile: cProfile.Profile, top: int = 45) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    out.write("\n--- by own time ---\n")
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def report(section: Section, runs: dict[RouteKind, RouteRun], settings: Settings) -> None:
    section.add(
        f"{settings.jobs:,} `low` jobs on {MODEL} (the realistic mix, none streamed), each "
        f"route in a runtime of its own on the same simulator settings (no latency, seed "
        f"{settings.seed}); batch: `low` at `deadline_h = 24`, `--route auto`, provider "
        f"turnaround {settings.turnaround_s:g} s, the gatherer every "
        f"{settings.gather_every_s:g} s; sync: `--route sync`, rpm {settings.rpm:,} (far "
        "above what this process does: the synchronous run is bound by this machine's CPU, "
        "not by the limit). Requests and write units counted from submit to the last job "
        "settled (the runtime's progress polls and the collection of outputs left out). "
        "Books checked (raise if not): ledger spent == cost records == the simulator's bill "
        "at each route's prices, nothing left reserved."
    )
    section.add(routes_table(runs))
    section.add(
        f"**Cost ratio batch ÷ sync: {ratio(runs):.4f}** (target {TARGET_RATIO}); "
        f"sync ${runs['sync'].cost_usd:,.4f}, batch ${runs['batch'].cost_usd:,.4f}, saved "
        f"${runs['sync'].cost_usd - runs['batch'].cost_usd:,.4f}."
    )
    section.add(ops_table({route: (r.run.aws, r.jobs) for route, r in runs.items()}))
    section.add(wru_table(runs))
    section.add(timeline(runs["batch"], settings))
    section.add(pass_times(runs["batch"]))


def arguments() -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument("--jobs", type=int, default=None, help=f"jobs per route (default {JOBS:,})")
    p.add_argument("--turnaround-s", type=float, default=TURNAROUND_S)
    p.add_argument("--gather-every-s", type=float, default=GATHER_EVERY_S)
    p.add_argument("--rpm", type=int, default=RPM, help="the synchronous route's rate limit")
    p.add_argument("--profile", action="store_true", help="cProfile the gatherer's passes")
    p.add_argument("--routes", nargs="+", choices=ROUTE_KINDS, default=ORDER, help="(default both)")
    return p.parse_args()


def main() -> None:
    args = arguments()
    settings = Settings(
        jobs=args.jobs or (200 if args.quick else JOBS),
        turnaround_s=5.0 if args.quick and args.turnaround_s == TURNAROUND_S else args.turnaround_s,
        gather_every_s=args.gather_every_s,
        rpm=args.rpm,
    )
    section = Section("batch_route", "Batch route against the synchronous route (issue 17)")
    profile = cProfile.Profile() if args.profile else None
    with workdir(args) as tmp:
        runs = compare(tmp, settings, profile, args.routes)
    if profile is not None:
        say(profile_text(profile))
    if set(runs) == set(ROUTE_KINDS):  # else a development run: no comparison
        report(section, runs, settings)
        finish(section, args)


if __name__ == "__main__":
    main()
