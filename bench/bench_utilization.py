"""Rate-limit utilization: how much of a provider's limit the pipeline fills, without 429s.

The simulator enforces a limit (600 requests/min, 300 ms per answer) and the pipeline is
configured to the same limit. Achieved successful requests per second divided by the limit
should be at least 0.97 (over the whole run, and in every full minute after the first: a
sliding window lets the first minute run ahead), 429s at most 0.5% of requests, and the
most requests the simulator saw in any 60 s window never above the limit. The second part
makes a tokens-per-minute limit bind before the request limit (every answer is exactly
``max_tokens`` long, so the limiter's estimates are close to the truth)::

    python -m bench.bench_utilization [--jobs 2000] [--tpm-jobs 600] [--repeat 2] [--quick]
        [--mix-only]

The third part runs a realistic mix of jobs (four priorities, prompts of 10 to 400 words, both
line forms, some streamed), each row once, against a rolling-minute limit, a provider that
enforces it per second as well, an unlimited provider and a faulty one
(``bench/_utilization_mix.py``); ``--mix-only`` runs just that part.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench._common import (
    Figure,
    RunResult,
    Section,
    figures_table,
    finish,
    measure,
    parser,
    say,
    workdir,
    write_jobs,
)
from bench._rates import full_minutes, max_in_window, mean_or_nan
from bench._utilization_mix import mix_section
from chatbatch.local.options import LocalOptions
from chatbatch.local.simulator import SimulatorSettings

RPM = 600
LATENCY_MS = 300
TPM_ANSWER_TOKENS = 200
TPM_RPM = 3000  # far above what the tokens allow


def requests_run(tmp: Path, jobs: int, seed: int) -> RunResult:
    path = write_jobs(tmp / "rpm.jsonl", jobs, max_tokens=50)
    sim = SimulatorSettings(rpm=RPM, latency_ms=LATENCY_MS)
    options = LocalOptions(rpm=RPM, tpm=100_000_000, simulator=sim, seed=seed, timeout_s=1800)
    return measure(options, path, tmp / f"out-rpm-{seed}")


def tokens_per_job(max_tokens: int) -> int:
    """The simulator's count for one of our jobs: prompt (~9 words + framing) + answer."""
    return 3 + 4 + 10 + max_tokens


def tokens_run(tmp: Path, jobs: int, seed: int, tpm: int) -> RunResult:
    path = write_jobs(tmp / "tpm.jsonl", jobs, max_tokens=TPM_ANSWER_TOKENS)
    sim = SimulatorSettings(
        rpm=TPM_RPM, tpm=tpm, latency_ms=LATENCY_MS, answer_tokens=TPM_ANSWER_TOKENS
    )
    options = LocalOptions(rpm=TPM_RPM, tpm=tpm, simulator=sim, seed=seed, timeout_s=1800)
    return measure(options, path, tmp / f"out-tpm-{seed}")


def describe(run: RunResult, label: str) -> None:
    stats = run.stats
    assert stats is not None
    s = run.summary
    say(
        f"{label}: {s.succeeded}/{s.jobs_total} ok in {run.wall_s:.1f} s "
        f"({run.jobs_per_s:.2f}/s; results per full minute after the first: "
        f"{', '.join(f'{m:.0f}' for m in full_minutes(run)) or 'none'}), "
        f"simulator: {stats.requests} requests, 429s {stats.by_status.get('429', 0)}, "
        f"max {stats.max_requests_60s} requests and {stats.max_tokens_60s} tokens in 60 s, "
        f"duplicates {stats.duplicates}"
    )


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--jobs", type=int, default=None, help="requests-bound run (default 2000)")
    p.add_argument("--tpm-jobs", type=int, default=None, help="tokens-bound run (default 600)")
    p.add_argument("--mix-only", action="store_true", help="only the realistic-mix rows")
    args = p.parse_args()
    if not args.mix_only:
        minute_limits(args)
    with workdir(args) as tmp:
        finish(mix_section(args, tmp), args)


def minute_limits(args: argparse.Namespace) -> None:
    """The requests-bound and tokens-bound runs: one priority, jobs alike."""
    jobs = args.jobs or (300 if args.quick else 2000)
    tpm_jobs = args.tpm_jobs or (150 if args.quick else 600)
    # ~276 jobs/min (600 jobs: one full minute after the first; --tpm-jobs 1000 for two):
    # the tokens bind long before 3,000 requests/min
    tpm = 60_000
    limit_rps = RPM / 60
    section = Section("utilization", "1. Rate-limit utilization")
    rpm_figs = [
        Figure("achieved / limit (whole run)", ">= 0.97", True, fmt="{:.3f}"),
        Figure("achieved / limit (full minutes after the first)", ">= 0.97", True, fmt="{:.3f}"),
        Figure("429s / requests", "<= 0.5%", False, "%", "{:.2f}"),
        Figure("max requests in any 60 s (simulator)", f"<= {RPM}", False, fmt="{:.0f}"),
        Figure("max results in any 60 s", f"<= {RPM}", False, fmt="{:.0f}"),
        Figure("wall time", f">= {jobs / limit_rps:.0f} s (the limit)", False, " s", "{:.1f}"),
        Figure("duplicates (simulator)", "0", False, fmt="{:.0f}"),
    ]
    tpm_figs = [
        Figure("achieved tokens / tpm (whole run)", ">= 0.97", True, fmt="{:.3f}"),
        Figure(
            "achieved tokens / tpm (full minutes after the first)", ">= 0.97", True, fmt="{:.3f}"
        ),
        Figure("best 60 s window: tokens / tpm (simulator)", "", True, fmt="{:.3f}"),
        Figure("429s / requests", "<= 0.5%", False, "%", "{:.2f}"),
        Figure("max tokens in any 60 s (simulator)", f"<= {tpm:,}", False, fmt="{:,.0f}"),
        Figure("max requests in any 60 s (simulator)", f"<= {TPM_RPM}", False, fmt="{:.0f}"),
        Figure("wall time", "", False, " s", "{:.1f}"),
    ]
    with workdir(args) as tmp:
        for r in range(args.repeat):
            run = requests_run(tmp, jobs, seed=r)
            describe(run, f"requests-bound run {r + 1}")
            stats = run.stats
            assert stats is not None
            values = [
                run.jobs_per_s / limit_rps,
                mean_or_nan(full_minutes(run)) / RPM,
                100 * stats.by_status.get("429", 0) / max(stats.requests, 1),
                stats.max_requests_60s,
                max_in_window(list(run.done_at.values())),
                run.wall_s,
                stats.duplicates,
            ]
            for fig, value in zip(rpm_figs, values, strict=True):
                fig.add(value)
        for r in range(args.repeat):
            run = tokens_run(tmp, tpm_jobs, seed=r, tpm=tpm)
            describe(run, f"tokens-bound run {r + 1}")
            stats = run.stats
            assert stats is not None
            billed = stats.prompt_tokens + stats.completion_tokens
            tokens = {
                c["custom_id"]: c["prompt_tokens"] + c["completion_tokens"] for c in run.costs
            }
            values = [
                billed / run.wall_s * 60 / tpm,
                mean_or_nan(full_minutes(run, tokens)) / tpm,
                stats.max_tokens_60s / tpm,
                100 * stats.by_status.get("429", 0) / max(stats.requests, 1),
                stats.max_tokens_60s,
                stats.max_requests_60s,
                run.wall_s,
            ]
            for fig, value in zip(tpm_figs, values, strict=True):
                fig.add(value)
    section.add(
        f"**Requests-bound**: {jobs:,} jobs, simulator and pipeline at {RPM} requests/min, "
        f"{LATENCY_MS} ms per answer, tokens unlimited. Achieved = successful requests/s "
        f"÷ {limit_rps:g}/s; a full minute = a minute (counted from the submit) that ended "
        "before the last result, so the backlog lasted all of it."
    )
    limits = {
        "achieved / limit (whole run)": "the limit itself (simulator and limiter agree); "
        "the limiter's 61 one-second slots cost at most 1/61 at saturation",
    }
    section.add(figures_table(rpm_figs, limits))
    section.add(
        f"**Tokens-bound**: {tpm_jobs:,} jobs of ~{tokens_per_job(TPM_ANSWER_TOKENS)} tokens "
        f"(every answer exactly {TPM_ANSWER_TOKENS} tokens = max_tokens), {tpm:,} tokens/min "
        f"and {TPM_RPM} requests/min on both sides, {LATENCY_MS} ms per answer. Achieved = "
        "tokens billed by the simulator per minute ÷ tpm."
    )
    section.add(
        figures_table(
            tpm_figs,
            {
                "achieved tokens / tpm (full minutes after the first)": "the limit; the "
                "limiter learns it from the x-ratelimit headers, after which a 429 takes 10% "
                "off its limit (it halved it before: 0.82 then)",
            },
        )
    )
    finish(section, args)


if __name__ == "__main__":
    main()
