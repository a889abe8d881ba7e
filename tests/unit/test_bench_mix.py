"""The utilization benchmark's realistic job file: every line a valid job, in both forms,
on the priorities asked for, the same jobs whatever the priorities."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from bench._mix import PRIORITIES, write_mix
from bench._rates import gaps, longest_gap
from chatbatch.core.config import load_config
from chatbatch.core.job_lines import parse_line


def test_the_mix_is_valid_varied_and_spread_over_the_priorities(tmp_path: Path) -> None:
    config = load_config()
    lines = write_mix(tmp_path / "mix.jsonl", 400).read_text().splitlines()
    jobs = [parse_line(text, config) for text in lines]
    assert Counter(job.priority for job in jobs) == {p: 100 for p in PRIORITIES}
    batch_form = sum('"url":"/v1/chat/completions"' in text for text in lines)
    streamed = sum(job.stream for job in jobs)
    assert 80 <= batch_form <= 160 and 20 <= streamed <= 70
    caps = [job.max_tokens or 0 for job in jobs]
    assert min(caps) >= 32 and max(caps) <= 200
    words = [len(str(job.messages[-1].content).split()) for job in jobs]
    assert min(words) >= 10 and max(words) <= 400 and max(words) > 300


def test_the_same_jobs_on_one_priority(tmp_path: Path) -> None:
    config = load_config()
    four = write_mix(tmp_path / "four.jsonl", 20).read_text().splitlines()
    low = write_mix(tmp_path / "low.jsonl", 20, priorities=["low"]).read_text().splitlines()
    a, b = parse_line(four[5], config), parse_line(low[5], config)
    assert b.priority == "low" and (a.max_tokens, a.stream) == (b.max_tokens, b.stream)


def test_gaps_between_successive_requests() -> None:
    assert gaps([0.0, 0.5, 3.0, 3.1, 10.0], over_s=1.0) == [(0.5, 2.5), (3.1, 6.9)]
    assert longest_gap([2.0, 1.0]) == 1.0 and longest_gap([]) == 0.0


def test_the_simulator_process_gets_the_rows_settings() -> None:
    """The command line built for a row's simulator process parses back to its settings."""
    from bench._sim_process import cli_args
    from chatbatch.local.simulator import FaultKind, SimulatorSettings
    from chatbatch.local.simulator.command import parse_args

    row = SimulatorSettings(
        rpm=600,
        tpm=90_000,
        per_second=True,
        latency_ms=300,
        seed=7,
        fault_rates={FaultKind.error_500: 0.05, FaultKind.error_503: 0.03},
    )
    parsed, _, _ = parse_args(cli_args(row))
    assert parsed == row
