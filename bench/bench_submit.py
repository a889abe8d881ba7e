"""Submit: a 1,000,000-line file validated, its manifest written and its jobs sent.

``chatbatch submit`` reads the file three times (``plan_file`` validates every line,
``write_manifest`` lists the ids, ``send_file`` sends the jobs 10 per SendMessageBatch
from 8 threads). Each pass runs here in a fresh process, so that its peak memory (the
process's maximum resident set, above what the imports alone take) is its own:

- validate: ``plan_file`` on the whole file;
- manifest: ``write_manifest`` (the upload itself is a no-op here);
- send: ``send_file`` to a no-op SQS client (it answers like SendMessageBatch, so this is
  our side of sending: parsing again, serializing, batching, threads);
- send to moto: ``send_file`` into moto's in-process SQS, a smaller file (moto's SQS
  rescans its queue on every send, so a million messages would measure moto, not us).

Also the Python allocations' peak (tracemalloc) of validating a slice of the file, to show
what grows with the number of lines::

    python -m bench.bench_submit [--lines 1000000] [--moto-lines 2000] [--repeat 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

from bench._common import (
    ROOT,
    Figure,
    Section,
    base_config,
    figures_table,
    finish,
    parser,
    say,
    workdir,
)
from chatbatch.client.submit import Plan, plan_file, send_file, write_manifest
from chatbatch.core.config import Priority
from chatbatch.core.resources import Resources
from chatbatch.state.sender import Sender

PHASES = ("validate", "manifest", "send", "moto")


def write_file(path: Path, lines: int) -> Path:
    """Both line forms, every priority, a few roles; ~150 bytes a line."""
    priorities = [p.value for p in Priority]
    with path.open("w") as out:
        for i in range(lines):
            if i % 4 == 0:
                line: dict[str, Any] = {
                    "custom_id": f"r{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {
                        "model": "deepseek-chat",
                        "messages": [{"role": "user", "content": f"Summarize item {i}."}],
                        "max_tokens": 100,
                    },
                }
            else:
                line = {
                    "custom_id": f"r{i}",
                    "prompt": f"Classify ticket {i}: the printer is on fire again.",
                    "priority": priorities[i % 4],
                }
                if i % 3 == 0:
                    line["role"] = "classify"
            out.write(json.dumps(line, separators=(",", ":")) + "\n")
    return path


class NoopSQS:
    """Answers SendMessageBatch like SQS, sends nothing."""

    def __init__(self) -> None:
        self.calls = 0

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        self.calls += 1
        return {"Successful": [{"Id": e["Id"], "MessageId": e["Id"]} for e in Entries]}


class NoopStore:
    bucket = "noop"

    def put_manifest(self, batch_id: str, body: Any) -> None:
        pass

    def put_claim(self, batch_id: str, custom_id: str, line: str) -> str:
        return f"claims/{batch_id}/{custom_id}.json"


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def phase(name: str, path: Path) -> dict[str, float]:
    """One pass over ``path`` in this process: seconds, lines, peak RSS above the imports."""
    config = base_config()
    baseline = max_rss_mb()
    plan = Plan(batch_id="bench", default_priority=Priority.normal)
    started = time.perf_counter()
    if name == "validate":
        plan = plan_file(path, config, "bench", Priority.normal)
        lines = plan.lines
    elif name == "manifest":
        write_manifest(path, config, "bench", NoopStore())  # type: ignore[arg-type]
        lines = sum(1 for _ in path.open("rb"))
    elif name == "send":
        queues = {p: f"https://sqs.local/{p.value}" for p in Priority}
        resources = Resources(table="t", bucket="noop", queues=queues)
        sender = Sender(NoopSQS(), NoopStore(), resources)  # type: ignore[arg-type]
        lines = send_file(path, config, plan, sender)
    else:
        return send_to_moto(path, config, plan) | {"rss_mb": max_rss_mb() - baseline}
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "lines": lines, "rss_mb": max_rss_mb() - baseline}


def send_to_moto(path: Path, config: Any, plan: Plan) -> dict[str, float]:
    """Send into moto (its start-up not timed); also the rate of the first and last quarter."""
    import boto3

    from chatbatch.local.aws import create_resources, moto_in_process
    from chatbatch.state.store import Store

    with moto_in_process():
        resources = create_resources(config)
        sender = Sender(boto3.client("sqs"), Store(boto3.client("s3"), resources.bucket), resources)
        progress: list[tuple[float, int]] = [(time.perf_counter(), 0)]

        def on_sent(n: int) -> None:
            progress.append((time.perf_counter(), progress[-1][1] + n))

        lines = send_file(path, config, plan, sender, on_sent=on_sent)
    quarter = lines / 4
    first = next(p for p in progress if p[1] >= quarter)
    last = next(p for p in progress if p[1] >= lines - quarter)
    end = progress[-1]
    return {
        "seconds": end[0] - progress[0][0],
        "lines": lines,
        "first_quarter_per_s": first[1] / (first[0] - progress[0][0]),
        "last_quarter_per_s": (end[1] - last[1]) / (end[0] - last[0]),
    }


def run_phase(name: str, path: Path) -> dict[str, float]:
    command = [sys.executable, "-m", "bench.bench_submit", "--phase", name, "--file", str(path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def allocations(path: Path, lines: int) -> tuple[int, float]:
    """(lines, MiB) peak of Python allocations while validating the first ``lines``."""
    part = path.with_name(f"first-{lines}.jsonl")
    with path.open("rb") as src, part.open("wb") as dst:
        for _, line in zip(range(lines), src, strict=False):
            dst.write(line)
    tracemalloc.start()
    plan_file(part, base_config(), "bench", Priority.normal)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return lines, peak / 2**20


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--lines", type=int, default=None, help="default 1,000,000")
    p.add_argument("--moto-lines", type=int, default=None, help="default 2,000")
    p.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    p.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.file)))
        return
    lines = args.lines or (50_000 if args.quick else 1_000_000)
    moto_lines = args.moto_lines or (1_000 if args.quick else 2_000)
    section = Section("submit", "6. Submit")
    figs = {
        name: (
            Figure(f"{name}: lines/s", "", True, fmt="{:,.0f}"),
            Figure(f"{name}: peak memory above the imports", "", False, " MiB", "{:,.0f}"),
        )
        for name in PHASES
    }
    total = Figure(
        "submit end to end (validate + manifest + send): lines/s", "", True, fmt="{:,.0f}"
    )
    with workdir(args) as tmp:
        started = time.monotonic()
        big = write_file(tmp / "big.jsonl", lines)
        small = write_file(tmp / "small.jsonl", moto_lines)
        size_mb = big.stat().st_size / 2**20
        say(f"wrote {lines:,} lines ({size_mb:,.0f} MiB) in {time.monotonic() - started:.0f} s")
        quarters: list[tuple[float, float]] = []
        for r in range(args.repeat):
            seconds = 0.0
            for name in PHASES:
                result = run_phase(name, small if name == "moto" else big)
                rate, memory = figs[name]
                rate.add(result["lines"] / result["seconds"])
                memory.add(result["rss_mb"])
                if name != "moto":
                    seconds += result["seconds"]
                else:
                    quarters.append((result["first_quarter_per_s"], result["last_quarter_per_s"]))
                say(
                    f"run {r + 1} {name}: {result['lines']:,.0f} lines in "
                    f"{result['seconds']:.1f} s, peak +{result['rss_mb']:,.0f} MiB"
                )
            total.add(lines / seconds)
        slice_lines, peak = allocations(big, min(lines, 200_000))
    section.add(
        f"{lines:,} lines ({size_mb:,.0f} MiB; both line forms, all priorities, a role on "
        f"some); the moto pass sends {moto_lines:,} lines. Each pass is a fresh process."
    )
    section.add(figures_table([f for pair in figs.values() for f in pair] + [total]))
    section.add(
        "moto's SQS slows down as its queues fill: lines/s in the first and the last quarter "
        "of the moto pass: "
        + "; ".join(f"run {i + 1}: {a:,.0f} → {b:,.0f}" for i, (a, b) in enumerate(quarters))
    )
    section.add(
        f"Python allocations' peak while validating the first {slice_lines:,} lines "
        f"(tracemalloc): {peak:,.1f} MiB ({peak * 2**20 / slice_lines:,.0f} bytes per line)."
    )
    finish(section, args)


if __name__ == "__main__":
    main()
