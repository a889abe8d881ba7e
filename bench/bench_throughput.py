"""Raw pipeline throughput and overhead: an unlimited, zero-latency provider.

The simulator runs in its own process (its CPU is not ours); moto runs in-process, as in
``chatbatch local run``. Reported:

- jobs/s through the local pipeline for 1,000 and 10,000 jobs (no quadratic slowdown:
  the 10,000-job run is also the load test, every job accounted for);
- CPU ms per job of this process, and a py-spy profile splitting it into moto (standing in
  for AWS) and our side (chatbatch and the libraries it calls), with the hot spots by
  file:line;
- at idle (one job at a time), the queue-to-result time a job spends outside the provider
  call, p50/p99, split by stage::

    python -m bench.bench_throughput [--jobs 1000] [--big 10000] [--idle 40] [--repeat 2] [--quick]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bench._common import (
    Figure,
    RunResult,
    Section,
    figures_table,
    finish,
    parser,
    run_file,
    runtime,
    say,
    table,
    workdir,
    write_jobs,
)
from bench._profile import Profile, py_spy, sampled
from bench._sim_process import simulator_process
from bench._stages import Stages
from chatbatch.local.options import LocalOptions


def options(url: str, seed: int, concurrency: int | None) -> LocalOptions:
    os.environ.setdefault("CHATBATCH_API_KEY", "sk-bench")
    return LocalOptions(
        provider_urls=[url],
        rpm=10_000_000,
        tpm=10_000_000_000,
        concurrency=concurrency,
        seed=seed,
        timeout_s=3600,
    )


def throughput_run(tmp: Path, url: str, jobs: int, seed: int, concurrency: int | None) -> RunResult:
    path = write_jobs(tmp / f"jobs-{jobs}.jsonl", jobs, max_tokens=50)
    with runtime(options(url, seed, concurrency)) as rt:
        return run_file(rt, path, tmp / f"out-{jobs}-{seed}")


def lost(run: RunResult, jobs: int) -> int:
    """Jobs without exactly one result and one cost record."""
    s, f = run.summary, run.facts
    return (
        jobs
        - min(s.succeeded, f.results, f.cost_ids)
        + (f.cost_records - f.cost_ids)
        + s.failed
        + s.dead_lettered
    )


@dataclass
class IdleRun:
    stages: Stages
    jobs: int


def idle_run(tmp: Path, url: str, jobs: int) -> IdleRun:
    """One job at a time: submit, wait for it, next."""
    stages = Stages()
    with stages.installed(), runtime(options(url, 0, None)) as rt:
        for i in range(jobs):
            path = write_jobs(tmp / "idle" / f"{i}.jsonl", 1, prefix=f"idle{i}-")
            rt.wait(rt.submit(path, f"idle{i}"))
    return IdleRun(stages, jobs)


def profile_tables(profile: Profile, cpu_ms_per_job: float) -> list[str]:
    ours = profile.samples - profile.under_moto
    rows = [
        [
            "moto (whole stacks under a moto frame)",
            f"{profile.share(profile.under_moto):.0%}",
            f"{cpu_ms_per_job * profile.share(profile.under_moto):.1f}",
        ],
        [
            "everything else: our side",
            f"{profile.share(ours):.0%}",
            f"{cpu_ms_per_job * profile.share(ours):.1f}",
        ],
    ]
    parts = [table(rows, ["CPU (GIL samples)", "share", "ms per job"])]
    listed = [
        (profile.moto_operations, 8, "moto: the request handler the CPU was spent under"),
        (profile.leaf_by_category, 12, "where the CPU is spent (leaf frame's package)"),
        (profile.ours_innermost, 12, "our side: innermost chatbatch frame (file:line)"),
        (profile.ours_functions, 12, "our side: chatbatch function, inclusive (moto excluded)"),
        (profile.leaves, 10, "our side: hottest leaf lines (any package)"),
    ]
    for counter, top, header in listed:
        rows = [[f"`{name}`", f"{profile.share(n):.1%}"] for name, n in counter.most_common(top)]
        parts.append(table(rows, [header, "share of all samples"]))
    return parts


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--jobs", type=int, default=None, help="the small run (default 1000)")
    p.add_argument("--big", type=int, default=None, help="the large run (default 10000)")
    p.add_argument("--idle", type=int, default=None, help="jobs one at a time (default 40)")
    p.add_argument("--concurrency", type=int, default=None, help="pollers per priority")
    args = p.parse_args()
    small = args.jobs or (200 if args.quick else 1000)
    big = args.big or (1000 if args.quick else 10_000)
    idle_jobs = args.idle or (10 if args.quick else 40)
    section = Section("throughput", "5. Raw throughput and overhead")
    rate_small = Figure(f"jobs/s, {small:,} jobs", ">= 50", True, fmt="{:.1f}")
    rate_big = Figure(f"jobs/s, {big:,} jobs", f"≈ the {small:,}-job rate", True, fmt="{:.1f}")
    cpu = Figure("CPU ms per job (this process, all threads)", "", False, fmt="{:.1f}")
    aws = Figure("AWS requests per job", "", False, fmt="{:.2f}")
    lost_fig = Figure(f"jobs lost of {big:,} (load test)", "0", False, fmt="{:.0f}")
    with workdir(args) as tmp, simulator_process() as url:
        for r in range(args.repeat):
            run = throughput_run(tmp, url, small, r, args.concurrency)
            rate_small.add(run.jobs_per_s)
            cpu.add(1000 * run.cpu_s / max(run.summary.succeeded, 1))
            aws.add(sum(run.aws.values()) / max(run.summary.succeeded, 1))
            say(
                f"{small} jobs, run {r + 1}: {run.jobs_per_s:.1f} jobs/s, "
                f"{1000 * run.cpu_s / small:.1f} CPU ms/job, "
                f"p50/p99 latency {run.summary.p50_latency_ms}/{run.summary.p99_latency_ms} ms"
            )
        run = throughput_run(tmp, url, big, 0, args.concurrency)
        rate_big.add(run.jobs_per_s)
        lost_fig.add(lost(run, big))
        say(
            f"{big} jobs: {run.jobs_per_s:.1f} jobs/s, {run.summary.succeeded} ok, "
            f"lost {lost(run, big)}, {1000 * run.cpu_s / big:.1f} CPU ms/job"
        )
        profile: list[Profile] = []
        if py_spy():
            with sampled() as profile:
                profiled = throughput_run(tmp, url, small, 99, args.concurrency)
            profiled_cpu = 1000 * profiled.cpu_s / max(profiled.summary.succeeded, 1)
        idle = idle_run(tmp, url, idle_jobs)
    section.add(
        f"Simulator in its own process, no limits, no latency; moto in-process; pollers per "
        f"priority as configured{'' if args.concurrency is None else f' ({args.concurrency})'}"
        "; all jobs normal priority, 50 output tokens."
    )
    limits = {}
    if profile:
        moto = profile[0].share(profile[0].under_moto)
        limits[rate_small.name] = (
            f"CPU: one process, one core's worth (the GIL); moto takes {moto:.0%} of it"
        )
        limits[cpu.name] = f"moto {moto:.0%}, our side {1 - moto:.0%} (profile below)"
    section.add(figures_table([rate_small, rate_big, lost_fig, cpu, aws], limits))
    if profile:
        section.add(
            f"**Profile** (py-spy, GIL-holding samples of every thread, a separate {small:,}-job "
            f"run at {profiled_cpu:.1f} CPU ms/job):"
        )
        for part in profile_tables(profile[0], profiled_cpu):
            section.add(part)
    else:
        section.add("Profile skipped: py-spy is not installed (`pip install py-spy`).")
    rows = [
        [name, f"{p50:.1f}", f"{p99:.1f}", f"{mean:.1f}"]
        for name, p50, p99, mean in idle.stages.summary()
    ]
    section.add(
        f"**At idle**: {idle_jobs} jobs one at a time (ms). The queue wait is the local "
        "emulator's polling (its pollers back off to one receive per second when the queue "
        "is empty; Lambda's event source mapping long-polls instead)."
    )
    section.add(table(rows, ["stage", "p50 ms", "p99 ms", "mean ms"]))
    finish(section, args)


if __name__ == "__main__":
    main()
