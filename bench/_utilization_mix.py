"""The utilization benchmark's realistic-mix rows (issue 14's targets), each measured in
one run against the simulator on 127.0.0.1, in a process of its own (as a provider is:
its clock and its counts are not slowed by the pipeline's process):

a. 900 jobs, all ``normal``, a rolling-minute limit of 600/min, 300 ms answers
b. the same 900 jobs over the four priorities
c. 600 jobs over the four priorities, the provider also enforcing 10 per second
d. an unlimited provider (pipeline at 6,000/min), 50 ms answers, 120 jobs: all ``normal``,
   all ``low``, over the four priorities; each three times, the run of median wall shown
e. 900 jobs over the four priorities with 5% 500s and 3% 503s, rolling-minute limit

Every row runs 20 worker instances on the one limit (``INSTANCES_PER_QUEUE`` pollers per
queue), as issue 14 asks; the shipped config allows 10 per queue (40), which on this
2-core machine only adds waiting instances that compete for the one process's CPU.

Each row: wall ÷ ideal (ideal = jobs ÷ limit), achieved ÷ limit (whole run, and per full
minute from the submit), requests ÷ limit (retries count at the provider), 429s ÷ requests,
the most requests in any 60 s ÷ the limit and in any 1 s ÷ limit/60, and the longest gap
between successive requests reaching the provider (jobs were waiting through all of it: it
lies between the run's first and last request).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench._common import RunResult, Section, measure, say, table
from bench._mix import PRIORITIES, write_mix
from bench._rates import full_minutes, gaps, longest_gap, mean_or_nan
from bench._sim_process import cli_args, simulator_process, stats_of
from chatbatch.local.options import LocalOptions
from chatbatch.local.simulator import FaultKind, SimulatorSettings

RPM = 600
LATENCY_MS = 300
FAST_MS = 50  # the unlimited provider's answers
FAST_RPM = 6000  # the pipeline's limit against it: far above what it reaches
GAP_S = 2.0  # gaps longer than this are listed
FAULTS = {FaultKind.error_500: 0.05, FaultKind.error_503: 0.03}
INSTANCES_PER_QUEUE = 5  # x 4 queues: 20 worker instances on one limit
FAST_RUNS = 3  # the unlimited rows last ~2 s: one run's start-up noise is 10-20% of it


@dataclass
class Row:
    """One run of the mix: what it was, and what it measured (``run`` None: timed out)."""

    key: str
    label: str
    jobs: int
    limit: int | None  # the provider's requests/min (None: unlimited)
    run: RunResult | None

    @property
    def ideal_s(self) -> float:
        return self.jobs / (self.limit / 60) if self.limit else float("nan")

    def ratios(self) -> dict[str, float]:
        """The row's figures; NaN where not measured (or no limit to divide by)."""
        run, limit = self.run, self.limit or float("nan")
        if run is None or run.stats is None:
            return {}
        stats, ok = run.stats, run.summary.succeeded
        return {
            "wall_s": run.wall_s,
            "wall/ideal": run.wall_s / self.ideal_s,
            "achieved/limit": ok / run.wall_s / (limit / 60) if run.wall_s else math.nan,
            "per full minute": mean_or_nan(full_minutes(run, first=0)) / limit,
            # the same from the first result on: the steady state, without the start-up
            "per full minute, running": mean_or_nan(
                full_minutes(run, first=0, since=min(run.done_at.values(), default=None))
            )
            / limit,
            # retries are requests too: what the provider's limit counts
            "requests/limit": stats.requests / run.wall_s / (limit / 60)
            if run.wall_s
            else math.nan,
            "429s": stats.by_status.get("429", 0) / max(stats.requests, 1),
            "max60/limit": stats.max_requests_60s / limit,
            "max1/share": stats.max_requests_1s / (limit / 60),
            "max1": float(stats.max_requests_1s),
            "gap_s": longest_gap(stats.received_s),
        }

    def cells(self) -> list[str]:
        r = self.ratios()
        if not r:
            return [self.key, self.label, f"timed out ({self.jobs} jobs)"] + [""] * 10
        assert self.run is not None and self.run.stats is not None
        causes = ", ".join(f"{k} {v}" for k, v in sorted(self.run.stats.rate_limited.items()))

        def f(name: str, fmt: str = "{:.3f}") -> str:
            return "—" if math.isnan(r[name]) else fmt.format(r[name])

        return [
            self.key,
            self.label,
            f"{self.run.summary.succeeded}/{self.jobs}",
            f"{r['wall_s']:.1f} s" + ("" if self.limit is None else f" / {self.ideal_s:.0f} s"),
            f("wall/ideal", "{:.2f}"),
            f"{f('achieved/limit')} / {f('per full minute')} / {f('per full minute, running')}",
            f("requests/limit"),
            f"{100 * r['429s']:.2f}%" + (f" ({causes})" if causes else ""),
            f("max60/limit"),
            f"{f('max1/share', '{:.2f}')} ({r['max1']:.0f})",
            f"{r['gap_s']:.1f} s",
            f"{self.ddb_per_job():.1f} / {1000 * self.run.cpu_s / self.jobs:.0f} ms",
        ]

    def ddb_per_job(self) -> float:
        """The pipeline's DynamoDB requests per job (the limiter's, the ledger's, the
        jobs' states), failed conditional writes included."""
        assert self.run is not None
        calls = sum(v for (service, _), v in self.run.aws.items() if service == "dynamodb")
        return calls / self.jobs


HEADER = [
    "row",
    "run",
    "ok",
    "wall / ideal",
    "wall ÷ ideal",
    "achieved ÷ limit: whole run / per full minute from the submit / from the first result",
    "requests ÷ limit (retries too)",
    "429s ÷ requests (by limit)",
    "max in 60 s ÷ limit",
    "max in 1 s ÷ limit/60 (requests)",
    "longest gap",
    "DynamoDB requests / job, CPU / job",
]


def mix_run(
    tmp: Path,
    key: str,
    jobs: int,
    priorities: Sequence[str],
    *,
    limit: int | None,
    per_second: bool = False,
    faults: dict[FaultKind, float] | None = None,
) -> RunResult | None:
    """One run of ``jobs`` mixed jobs on ``priorities``; None if it did not finish in time."""
    path = write_mix(tmp / f"mix-{key}.jsonl", jobs, priorities=priorities)
    sim = SimulatorSettings(
        rpm=limit,
        per_second=per_second,
        latency_ms=LATENCY_MS if limit else FAST_MS,
        fault_rates=faults or {},
    )
    ideal_s = jobs / (limit / 60) if limit else 0.0
    os.environ.setdefault("CHATBATCH_API_KEY", "sk-bench")
    with simulator_process(cli_args(sim)) as url:
        options = LocalOptions(
            provider_urls=[url],
            rpm=limit or FAST_RPM,
            tpm=100_000_000,
            timeout_s=max(300.0, 4 * ideal_s),
            concurrency=INSTANCES_PER_QUEUE,
            log_file=tmp / f"worker-{key}.log",  # its retry warnings, off the figures
        )
        try:
            run = measure(options, path, tmp / f"out-mix-{key}")
        except TimeoutError as err:
            say(f"row {key}: {err}")
            return None
        run = dataclasses.replace(run, stats=stats_of(url))
    describe(key, run)
    return run


def median_run(runs: Sequence[RunResult | None]) -> RunResult | None:
    """The run of median wall time (None if any timed out)."""
    done = [run for run in runs if run is not None]
    if len(done) < len(runs):
        return None
    return sorted(done, key=lambda run: run.wall_s)[len(done) // 2]


def describe(key: str, run: RunResult) -> None:
    """The run's long gaps, its hand-backs (SQS SendMessage by the workers) and back-offs
    (ChangeMessageVisibility), and when each priority's last result came (from the submit)."""
    stats = run.stats
    assert stats is not None
    first = min(stats.received_s, default=0.0)
    long = ", ".join(f"{a - first:.1f} s +{g:.1f} s" for a, g in gaps(stats.received_s, GAP_S))
    last = {
        p: max((t for c, t in run.done_at.items() if c[0] == p[0]), default=math.nan)
        for p in PRIORITIES
    }
    finished = ", ".join(
        f"{p} {t - run.submitted_at:.1f} s" for p, t in last.items() if not math.isnan(t)
    )
    say(
        f"row {key}: {run.summary.succeeded}/{run.summary.jobs_total} ok in {run.wall_s:.1f} s, "
        f"{stats.requests} requests, 429s {stats.by_status.get('429', 0)} "
        f"{stats.rate_limited}, max {stats.max_requests_60s}/60 s {stats.max_requests_1s}/1 s; "
        f"hand-backs {run.aws[('sqs', 'SendMessage')]}, back-offs "
        f"{run.aws[('sqs', 'ChangeMessageVisibility')]}; "
        f"gaps > {GAP_S:g} s (at, from the first request): {long or 'none'}; "
        f"last result by priority: {finished}"
    )


def mix_section(args: argparse.Namespace, tmp: Path) -> Section:
    quick = bool(args.quick)
    big, small, fast = (120, 80, 40) if quick else (900, 600, 120)
    section = Section("utilization-mix", "1b. Rate-limit utilization: a realistic mix")
    every = list(PRIORITIES)
    rows = [
        Row("a", "all normal", big, RPM, mix_run(tmp, "a", big, ["normal"], limit=RPM)),
        Row("b", "four priorities", big, RPM, mix_run(tmp, "b", big, every, limit=RPM)),
        Row(
            "c",
            "four priorities, provider also per second",
            small,
            RPM,
            mix_run(tmp, "c", small, every, limit=RPM, per_second=True),
        ),
    ]
    unlimited = [("d1", "normal", ["normal"]), ("d2", "low", ["low"]), ("d3", "four", every)]
    for key, name, on in unlimited:
        label = f"unlimited, {FAST_MS} ms, {name} (median of {FAST_RUNS})"
        runs = [mix_run(tmp, f"{key}-{i}", fast, on, limit=None) for i in range(FAST_RUNS)]
        rows.append(Row(key, label, fast, None, median_run(runs)))
    faulted = mix_run(tmp, "e", big, every, limit=RPM, faults=dict(FAULTS))
    rows.append(Row("e", "four priorities, 5% 500 + 3% 503", big, RPM, faulted))
    section.add(
        f"Jobs: prompts of 10–400 words, max_tokens 32–200, ~10% streamed, ~30% in OpenAI "
        f"batch form (`bench/_mix.py`, seeded). Provider: the simulator at {RPM} requests/min "
        f"over a rolling minute, {LATENCY_MS} ms answers, pipeline at the same limit with "
        f"{4 * INSTANCES_PER_QUEUE} worker instances ({INSTANCES_PER_QUEUE} per queue); "
        f"rows d: no limit in the simulator, {FAST_MS} ms answers, pipeline at {FAST_RPM}/min. "
        "Ideal = jobs ÷ limit. Per full minute = results in each minute from the submit that "
        "ended before the last result (— if none did), and the same counted from the first "
        "result (the steady state: the start-up, ~1 s from the submit to the first answer "
        "here, is left to wall ÷ ideal). Longest gap = the longest time no "
        "request reached the provider between the run's first and last request."
    )
    section.add(table([row.cells() for row in rows], HEADER))
    section.add(unlimited_ratios({row.key: row for row in rows}))
    return section


def unlimited_ratios(rows: dict[str, Row]) -> str:
    walls = {k: rows[k].ratios().get("wall_s", math.nan) for k in ("d1", "d2", "d3")}
    return (
        f"Unlimited provider: wall four priorities ÷ all normal "
        f"{walls['d3'] / walls['d1']:.2f} (target ≤ 1.1), all low ÷ all normal "
        f"{walls['d2'] / walls['d1']:.2f}."
    )
