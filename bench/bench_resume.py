"""How big a local run's journal is per job, and how fast a new process replays it.

A run of ``--jobs`` jobs against the simulator (no latency, no limits) journals its state
in a state directory. Two copies of it are replayed into a fresh moto, as ``local run``
does when it resumes: the journal as a process killed at the end of the run leaves it
(every write, in order), and as a process that ended leaves it (compacted: the state,
not its history)::

    python bench/bench_resume.py [--jobs 1000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from chatbatch.core.config import load_config
from chatbatch.local.aws import create_resources, moto_in_process
from chatbatch.local.journal.state_dir import JOURNAL, durable
from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime


def journal_figures(state: Path, jobs: int) -> str:
    journal = state / JOURNAL
    lines = journal.read_bytes().count(b"\n")
    return f"{journal.stat().st_size / jobs:,.0f} bytes/job, {lines / jobs:.1f} lines/job"


def replay(state: Path, jobs: int) -> str:
    """Replay ``state`` into a fresh moto; the figures of the replay."""
    with moto_in_process():
        resources = create_resources(load_config(None))
        started = time.monotonic()
        with durable(state, resources) as report:
            seconds = time.monotonic() - started  # replay, messages sent again, compaction
        assert report.refused == 0, report
    return (
        f"{jobs / seconds:,.0f} jobs/s ({report.writes / seconds:,.0f} writes/s, "
        f"{seconds:.2f} s for {report.writes:,} writes)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    args = parser.parse_args()
    n = args.jobs
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = work / "jobs.jsonl"
        lines = [{"custom_id": f"r-{i:06d}", "prompt": f"resume question {i}"} for i in range(n)]
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        killed, ended = work / "killed", work / "ended"
        started = time.monotonic()
        with LocalRuntime(LocalOptions(state_dir=ended)) as rt:
            summary = rt.run(path, work / "out")
            shutil.copytree(ended, killed)  # what a kill -9 at the end leaves
        assert summary.succeeded == n, summary
        print(f"run: {n:,} jobs in {time.monotonic() - started:.1f} s")
        print(f"journal as written (a killed run): {journal_figures(killed, n)}")
        print(f"journal compacted (a run that ended): {journal_figures(ended, n)}")
        print(f"replay of the journal as written: {replay(killed, n)}")
        print(f"replay of the compacted journal: {replay(ended, n)}")


if __name__ == "__main__":
    main()
