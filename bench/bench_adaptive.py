"""Adaptive limit: the pipeline is configured at twice the provider's real limit.

The simulator allows 600 requests/min (300 ms per answer); the pipeline believes 1,200.
Two providers: one that sends ``x-ratelimit-limit-*`` headers (OpenAI does; the limiter
learns the real limit from the first answer) and one that does not (DeepSeek does not; the
simulator's limit headers are switched off for this run and the limiter has only the 429s
to go by: it halves its limit on a 429 and grows back 5% every 10 s). Reported: the 429
rate per 30 s of the run, the time until it falls under 5% for good, the overall 429 rate
and the achieved rate against the real limit::

    python -m bench.bench_adaptive [--jobs 700] [--real-rpm 600] [--repeat 2] [--quick]
"""

from __future__ import annotations

import threading
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from bench._common import (
    Figure,
    RunResult,
    Section,
    figures_table,
    finish,
    parser,
    patched,
    run_file,
    runtime,
    say,
    table,
    workdir,
    write_jobs,
)
from chatbatch.local import simulator as simulator_module
from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime
from chatbatch.local.simulator import SimulatorSettings

REAL_RPM = 600
LATENCY_MS = 300
BUCKET_S = 30.0
UNDER = 0.05


def without_limit_headers() -> AbstractContextManager[None]:
    """The simulator answers without ``x-ratelimit-*`` headers (429s keep Retry-After)."""
    return patched((simulator_module.Engine, "_limit_headers", lambda self, model, now: {}))


class Sampler:
    """The simulator's cumulative requests and 429s, once a second, in a thread."""

    def __init__(self, rt: LocalRuntime) -> None:
        self.rt = rt
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        assert self.rt.simulator is not None
        while not self._stop.is_set():
            stats = self.rt.simulator.stats()
            self.samples.append((time.monotonic(), stats.requests, stats.by_status.get("429", 0)))
            self._stop.wait(1.0)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Buckets:
    rates: list[tuple[int, int, float]]  # (bucket end s, requests, 429 share)

    def under_for_good(self) -> float:
        """End of the last bucket at or above ``UNDER`` (0 if none): from then on, under."""
        over = [end for end, n, share in self.rates if n and share >= UNDER]
        return float(max(over, default=0))


def buckets(samples: list[tuple[float, int, int]]) -> Buckets:
    start = samples[0][0]
    rates = []
    edge, prev = BUCKET_S, samples[0]
    for sample in samples[1:]:
        if sample[0] - start >= edge or sample is samples[-1]:
            n, limited = sample[1] - prev[1], sample[2] - prev[2]
            rates.append((round(sample[0] - start), n, limited / n if n else 0.0))
            prev, edge = sample, edge + BUCKET_S
    return Buckets(rates)


def one_run(
    tmp: Path, jobs: int, real_rpm: int, seed: int, headers: bool
) -> tuple[RunResult, Buckets]:
    path = write_jobs(tmp / "jobs.jsonl", jobs, max_tokens=50)
    sim = SimulatorSettings(rpm=real_rpm, latency_ms=LATENCY_MS)
    options = LocalOptions(
        rpm=2 * real_rpm, tpm=100_000_000, simulator=sim, seed=seed, timeout_s=1800
    )
    with (
        without_limit_headers() if not headers else nullcontext(),
        runtime(options) as rt,
        Sampler(rt) as sampler,
    ):
        run = run_file(rt, path, tmp / "out")
    return run, buckets(sampler.samples)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--jobs", type=int, default=None, help="jobs per run (default 700)")
    p.add_argument("--real-rpm", type=int, default=None, help="the simulator's (default 600)")
    args = p.parse_args()
    jobs = args.jobs or (330 if args.quick else 700)
    real_rpm = args.real_rpm or (300 if args.quick else REAL_RPM)
    section = Section("adaptive", "2. Adaptive limit")
    section.add(
        f"{jobs:,} jobs; the simulator allows {real_rpm} requests/min, the pipeline is "
        f"configured to {2 * real_rpm}; {LATENCY_MS} ms per answer. 429 share per "
        f"{BUCKET_S:.0f} s of the run (bucket end: requests, 429 share)."
    )
    for headers in (False, True):
        label = "with limit headers" if headers else "without limit headers (AIMD only)"
        figs = [
            Figure("time until 429s < 5% for good", "", False, " s", "{:.0f}"),
            Figure("429s / requests, whole run", "", False, "%", "{:.2f}"),
            Figure("achieved / real limit (whole run)", "", True, fmt="{:.3f}"),
            Figure("wall time", "", False, " s", "{:.1f}"),
        ]
        rows = []
        for r in range(args.repeat):
            with workdir(args) as tmp:
                run, found = one_run(tmp / f"r{r}", jobs, real_rpm, seed=r, headers=headers)
            stats = run.stats
            assert stats is not None
            limited = stats.by_status.get("429", 0)
            values = [
                found.under_for_good() or 0.0,
                100 * limited / max(stats.requests, 1),
                run.jobs_per_s / (real_rpm / 60),
                run.wall_s,
            ]
            for fig, value in zip(figs, values, strict=True):
                fig.add(value)
            series = ", ".join(f"{end}s: {n}, {share:.1%}" for end, n, share in found.rates)
            rows.append([f"run {r + 1}", series])
            say(f"{label}, run {r + 1}: {run.summary.succeeded} ok, {limited} 429s; {series}")
        section.add(f"**{label}**")
        section.add(figures_table(figs))
        section.add(table(rows, ["run", "429 share per 30 s"]))
    finish(section, args)


if __name__ == "__main__":
    main()
