"""Priority: critical jobs overtake a backlog of low ones when the rate limit is the bottleneck.

A backlog of low jobs runs against a limit of 600 requests/min (simulator and pipeline,
300 ms per answer). Once the limiter's minute is full of low requests, critical jobs are
submitted. Reported: p50/p95 queue-to-result (from the moment the file is submitted to the
moment its result is stored, the cost record's ``ts``) of the critical and of the low jobs,
and of the same critical jobs on an idle pipeline with the same limit; and how many low jobs
still finished while the critical ones ran (slowed, never starved)::

    python -m bench.bench_priority [--low 1000] [--critical 100] [--repeat 2] [--quick]
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from bench._common import (
    Figure,
    Section,
    collect,
    figures_table,
    finish,
    finished_at,
    parser,
    percentile,
    runtime,
    say,
    workdir,
    write_jobs,
)
from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime
from chatbatch.local.simulator import SimulatorSettings

RPM = 600
LATENCY_MS = 300


def options(seed: int) -> LocalOptions:
    sim = SimulatorSettings(rpm=RPM, latency_ms=LATENCY_MS)
    return LocalOptions(rpm=RPM, tpm=100_000_000, simulator=sim, seed=seed, timeout_s=1800)


@dataclass
class PriorityRun:
    critical: list[float]  # queue-to-result seconds
    low: list[float]
    low_during_critical: int  # low results stored while critical jobs were running
    critical_span_s: float  # submit to last critical result
    backlog_done_before: int  # low jobs finished when the critical ones were submitted
    requests_429: int


def feed_until(rt: LocalRuntime, batch_id: str, succeeded: int, timeout_s: float = 900) -> int:
    """Keep the queues fed until ``succeeded`` jobs of the batch are done; how many are."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for feeder in rt.feeders.values():
            feeder.pump()
        info = rt.batches.get(batch_id)
        if info and info.succeeded >= succeeded:
            return info.succeeded
        time.sleep(0.25)
    raise TimeoutError(f"{batch_id}: fewer than {succeeded} jobs done in {timeout_s} s")


def loaded(tmp: Path, low: int, critical: int, seed: int) -> PriorityRun:
    low_path = write_jobs(tmp / "low.jsonl", low, prefix="low", priority="low")
    crit_path = write_jobs(tmp / "crit.jsonl", critical, prefix="crit", priority="critical")
    with runtime(options(seed)) as rt:
        low_at = time.time()
        low_plan = rt.submit(low_path, "low")
        # the minute's window full of low requests (or half the backlog done, if smaller);
        # ``wait`` would return only once the whole backlog is in SQS, so feed by hand
        threshold = min(RPM, low // 2)
        before = feed_until(rt, "low", threshold)
        crit_at = time.time()
        crit_plan = rt.submit(crit_path, "crit")
        crit_info = rt.wait(crit_plan)
        low_info = rt.wait(low_plan)
        _, crit_costs = collect(rt, crit_path, crit_plan, crit_info, tmp / "o-crit", 0)
        _, low_costs = collect(rt, low_path, low_plan, low_info, tmp / "o-low", 0)
        stats = rt.simulator.stats() if rt.simulator else None
    crit_done, low_done = finished_at(crit_costs), finished_at(low_costs)
    crit_end = max(crit_done.values())
    return PriorityRun(
        critical=[t - crit_at for t in crit_done.values()],
        low=[t - low_at for t in low_done.values()],
        low_during_critical=sum(crit_at <= t <= crit_end for t in low_done.values()),
        critical_span_s=crit_end - crit_at,
        backlog_done_before=before,
        requests_429=stats.by_status.get("429", 0) if stats else 0,
    )


def idle(tmp: Path, critical: int, seed: int) -> list[float]:
    path = write_jobs(tmp / "crit-idle.jsonl", critical, prefix="crit", priority="critical")
    with runtime(options(seed)) as rt:
        at = time.time()
        plan = rt.submit(path, "crit")
        info = rt.wait(plan)
        _, costs = collect(rt, path, plan, info, tmp / "o-idle", 0)
    return [t - at for t in finished_at(costs).values()]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--low", type=int, default=None, help="backlog of low jobs (default 1000)")
    p.add_argument("--critical", type=int, default=None, help="critical jobs (default 100)")
    args = p.parse_args()
    low = args.low or (200 if args.quick else 1000)
    critical = args.critical or (20 if args.quick else 100)
    section = Section("priority", "3. Priority")
    s = " s"
    figs = {
        "crit_p50": Figure("critical p50, behind the low backlog", "≈ idle", False, s),
        "crit_p95": Figure("critical p95, behind the low backlog", "≈ idle", False, s),
        "idle_p50": Figure("critical p50, idle pipeline", "", False, s),
        "idle_p95": Figure("critical p95, idle pipeline", "", False, s),
        "ratio": Figure("critical p50 loaded ÷ idle", "close to 1", False, fmt="{:.2f}"),
        "low_p50": Figure("low p50 (from its submit)", "", False, s),
        "low_p95": Figure("low p95 (from its submit)", "", False, s),
        "low_during": Figure(
            "low results while critical ran", "> 0 (never starved)", True, fmt="{:.0f}"
        ),
        "429": Figure("429s", "0", False, fmt="{:.0f}"),
    }
    with workdir(args) as tmp:
        for r in range(args.repeat):
            run = loaded(tmp, low, critical, seed=r)
            base = idle(tmp, critical, seed=r)
            values = {
                "crit_p50": percentile(run.critical, 50),
                "crit_p95": percentile(run.critical, 95),
                "idle_p50": percentile(base, 50),
                "idle_p95": percentile(base, 95),
                "low_p50": percentile(run.low, 50),
                "low_p95": percentile(run.low, 95),
                "low_during": run.low_during_critical,
                "429": run.requests_429,
            }
            values["ratio"] = values["crit_p50"] / values["idle_p50"]
            for key, value in values.items():
                figs[key].add(value)
            say(
                f"run {r + 1}: critical submitted after {run.backlog_done_before} low results; "
                f"critical p50/p95 {values['crit_p50']:.1f}/{values['crit_p95']:.1f} s "
                f"(idle {values['idle_p50']:.1f}/{values['idle_p95']:.1f} s), all critical "
                f"done in {run.critical_span_s:.1f} s, {run.low_during_critical} low results "
                f"meanwhile; low p50/p95 {values['low_p50']:.1f}/{values['low_p95']:.1f} s"
            )
    section.add(
        f"{low:,} low jobs, then {critical} critical jobs once "
        f"{min(RPM, low // 2)} low ones are done (the limiter's minute is full, the rest of "
        "the low backlog waits: 100 in SQS, the others in the local runtime's feeder); "
        f"{RPM} requests/min on both sides, {LATENCY_MS} ms per answer; the idle baseline "
        "is the same critical file on a fresh pipeline. Queue-to-result = submit to stored "
        "result."
    )
    section.add(figures_table(list(figs.values())))
    finish(section, args)


if __name__ == "__main__":
    main()
