"""What the benchmarks share: job files, a measured run through the local runtime, the facts
a run leaves behind (ledger, cost records, DLQs), figures taken more than once, and the
sections of BENCHMARKS.md.

Everything runs on this machine: moto in-process, the provider simulator on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import resource
import shlex
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3

from chatbatch.client.submit import Plan
from chatbatch.core.config import Config, load_config
from chatbatch.core.jobs import Job
from chatbatch.core.routing import Override
from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime
from chatbatch.local.simulator import Stats
from chatbatch.local.summary import Summary
from chatbatch.state.batches import BatchInfo
from chatbatch.state.budget.budget import Budget
from chatbatch.worker import handler as worker
from chatbatch.worker.crash import WorkerCrash

ROOT = Path(__file__).resolve().parent.parent
MD_PATH = ROOT / "BENCHMARKS.md"
MD_TITLE = "# Benchmarks"
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "omicron",
    "pi",
    "rho",
    "sigma",
    "tau",
    "upsilon",
    "phi",
    "chi",
    "psi",
    "omega",
]


# --- the machine --------------------------------------------------------------------


def memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return 0.0


def load_avg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f}/{five:.1f}/{fifteen:.1f}"


def machine() -> str:
    from importlib.metadata import version

    return (
        f"{os.cpu_count()} cores, {memory_gib():.0f} GiB, {platform.machine()}, "
        f"Python {platform.python_version()}, moto {version('moto')}, "
        f"boto3 {version('boto3')}"
    )


def cpu_s() -> float:
    """User + system CPU seconds of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- job files ----------------------------------------------------------------------


def job_line(
    custom_id: str,
    i: int,
    *,
    words: int = 8,
    max_tokens: int = 50,
    priority: str | None = None,
    stream: bool = False,
    model: str | None = None,
) -> str:
    prompt = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(words))
    line: dict[str, Any] = {
        "custom_id": custom_id,
        "prompt": f"{i} {prompt}",
        "max_tokens": max_tokens,
    }
    if priority:
        line["priority"] = priority
    if stream:
        line["stream"] = True
    if model:
        line["model"] = model
    return json.dumps(line, separators=(",", ":"))


def write_jobs(
    path: Path,
    n: int,
    *,
    prefix: str = "j",
    stream_every: int = 0,
    **kwargs: Any,
) -> Path:
    """``n`` short-form jobs, one model, distinct prompts; every ``stream_every``-th streamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for i in range(n):
            stream = bool(stream_every) and i % stream_every == 0
            out.write(job_line(f"{prefix}{i:06d}", i, stream=stream, **kwargs) + "\n")
    return path


def write_config(path: Path, config: Config, **sections: dict[str, Any]) -> Path:
    """The config with some keys of some sections replaced, as JSON (``LocalOptions.config_path``).

    ``sections`` maps a section (``worker``, ``retries``, ``budget``) to the keys to change;
    ``providers`` and ``models`` change every provider's (model's) keys the same way.
    """
    data = config.model_dump(mode="json")
    for section, changes in sections.items():
        if section in ("providers", "models"):
            for entry in data[section].values():
                for key, value in changes.items():
                    entry[key] = entry[key] | value if isinstance(value, dict) else value
        else:
            data[section] |= changes
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def base_config() -> Config:
    return load_config(ROOT / "chatbatch.toml")


# --- wrappers around product code (from here, never edited there) --------------------


@contextmanager
def patched(*changes: tuple[object, str, object]) -> Iterator[None]:
    """Set ``owner.name = value`` for each change while the block runs."""
    with ExitStack() as stack:
        for owner, name, value in changes:
            stack.callback(setattr, owner, name, getattr(owner, name))
            setattr(owner, name, value)
        yield


Hook = Callable[[int, dict[str, Any]], None]


@dataclass
class Invocations:
    """Every call of the worker's handler: what it held, how long it took, what escaped."""

    count: int = 0
    batches: list[list[str]] = field(default_factory=list)  # message ids per invocation
    durations: list[float] = field(default_factory=list)  # seconds (what Lambda bills)
    failures: list[str] = field(default_factory=list)  # what escaped, WorkerCrash aside
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextmanager
def watched(before: Hook | None = None, after: Hook | None = None) -> Iterator[Invocations]:
    """Wrap ``worker.Instance.handle``; ``before``/``after(n, event)`` around the n-th call."""
    seen = Invocations()
    original = worker.Instance.handle

    def handle(instance: worker.Instance, event: dict[str, Any], context: Any) -> Any:
        with seen.lock:
            seen.count += 1
            n = seen.count
            seen.batches.append([r["messageId"] for r in event.get("Records", [])])
        if before:
            before(n, event)
        started = time.monotonic()
        try:
            return original(instance, event, context)
        except WorkerCrash:
            raise
        except BaseException as err:
            with seen.lock:
                seen.failures.append(repr(err)[:300])
            raise
        finally:
            with seen.lock:
                seen.durations.append(time.monotonic() - started)
            if after:
                after(n, event)

    with patched((worker.Instance, "handle", handle)):
        yield seen


# --- a measured run -----------------------------------------------------------------


@dataclass
class Facts:
    """What a finished run left behind, read back from moto."""

    ledger_spent: Decimal
    ledger_reserved: Decimal
    cost_records: int  # the jobs' own records (not those of calls booked unread)
    cost_ids: int  # distinct custom_ids among them
    unread_records: int  # calls whose answer was never read, booked at their worst case
    unread_sum: Decimal
    cost_sum: Decimal  # every record
    cost_nanos: int
    result_cost_sum: Decimal
    results: int
    dlq: int  # messages in the dead-letter queues
    queued: int  # messages still in the priority queues


@dataclass
class RunResult:
    summary: Summary
    stats: Stats | None
    facts: Facts
    info: BatchInfo
    wall_s: float
    cpu_s: float
    submitted_at: float  # epoch seconds when the file was handed to ``submit``
    sent_at: dict[str, float]  # custom_id -> epoch seconds it went onto its SQS queue
    done_at: dict[str, float]  # custom_id -> epoch seconds of its cost record (result stored)
    aws: Counter[tuple[str, str]]  # the pipeline's AWS calls (not setup, polling, collection)
    costs: list[dict[str, Any]]
    path: Path
    plan: Plan
    out: Path

    def refresh(self, rt: LocalRuntime) -> None:
        """Collect the outputs and read the facts again (after late redeliveries)."""
        self.info = rt.batches.get(self.plan.batch_id) or self.info
        self.summary, self.costs = collect(
            rt, self.path, self.plan, self.info, self.out, self.wall_s
        )
        self.facts = facts(rt, self.out)

    @property
    def jobs_per_s(self) -> float:
        return self.summary.succeeded / self.wall_s if self.wall_s else 0.0

    def queue_to_result(self, ids: Iterable[str] | None = None) -> list[float]:
        """Seconds from submit to stored result, per finished job."""
        keys = self.done_at.keys() if ids is None else ids
        return [self.done_at[k] - self.submitted_at for k in keys if k in self.done_at]


class SendLog:
    """Records when each job went onto its queue (wraps the runtime's ``Sender.send``)."""

    def __init__(self, rt: LocalRuntime) -> None:
        self.at: dict[str, float] = {}
        original = rt.sender.send

        def send(priority: Any, jobs: list[Job], delay_s: int = 0) -> int:
            sent = original(priority, jobs, delay_s)
            now = time.time()
            for job in jobs:
                self.at.setdefault(job.custom_id, now)
            return sent

        rt.sender.send = send  # type: ignore[method-assign,assignment]


class PollCount:
    """Counts the runtime's own progress reads, which are not the pipeline's requests."""

    def __init__(self, rt: LocalRuntime) -> None:
        self.reads = 0
        original = rt.batches.get

        def get(batch_id: str) -> BatchInfo | None:
            self.reads += 1
            return original(batch_id)

        rt.batches.get = get  # type: ignore[method-assign]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def dlq_depth(rt: LocalRuntime, queues: Iterable[str] | None = None) -> int:
    sqs = boto3.client("sqs")
    total = 0
    for url in queues if queues is not None else rt.resources.dlqs.values():
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        total += int(attrs["ApproximateNumberOfMessages"])
        total += int(attrs["ApproximateNumberOfMessagesNotVisible"])
    return total


def facts(rt: LocalRuntime, out: Path) -> Facts:
    costs = read_jsonl(out / "costs.jsonl")
    results = read_jsonl(out / "results.jsonl")
    usage = Budget(boto3.client("dynamodb"), rt.resources.table, rt.config).usage()
    jobs = [c for c in costs if c.get("attempt") is None]
    unread = [c for c in costs if c.get("attempt") is not None]
    return Facts(
        ledger_spent=usage.spent_usd,
        ledger_reserved=usage.reserved_usd,
        cost_records=len(jobs),
        cost_ids=len({c["custom_id"] for c in jobs}),
        unread_records=len(unread),
        unread_sum=sum((Decimal(c["cost_usd"]) for c in unread), Decimal(0)),
        cost_sum=sum((Decimal(c["cost_usd"]) for c in costs), Decimal(0)),
        cost_nanos=sum(int(c["cost_nanos"]) for c in costs),
        result_cost_sum=sum(
            (Decimal(str(r["chatbatch"]["cost_usd"])) for r in results if r.get("chatbatch")),
            Decimal(0),
        ),
        results=len(results),
        dlq=dlq_depth(rt),
        queued=dlq_depth(rt, rt.resources.queues.values()),
    )


def epoch(ts: str) -> float:
    return dt.datetime.fromisoformat(ts).timestamp()


@contextmanager
def runtime(options: LocalOptions) -> Iterator[LocalRuntime]:
    with LocalRuntime(options) as rt:
        yield rt


def track(rt: LocalRuntime) -> tuple[SendLog, PollCount]:
    """The send log and poll counter of a runtime, installed on first use."""
    found: tuple[SendLog, PollCount] | None = getattr(rt, "_bench_track", None)
    if found is None:
        found = (SendLog(rt), PollCount(rt))
        setattr(rt, "_bench_track", found)  # noqa: B010 (LocalRuntime has no such field)
    return found


def collect(
    rt: LocalRuntime, path: Path, plan: Plan, info: BatchInfo, out: Path, wall: float
) -> tuple[Summary, list[dict[str, Any]]]:
    """``local run``'s outputs for one batch, and its cost records."""
    summary = rt.write_outputs(path, plan, info, out, wall)
    return summary, read_jsonl(out / "costs.jsonl")


def finished_at(costs: Iterable[dict[str, Any]]) -> dict[str, float]:
    """custom_id -> when its result was stored (the cost record's timestamp)."""
    return {c["custom_id"]: epoch(c["ts"]) for c in costs}


def run_file(
    rt: LocalRuntime,
    path: Path,
    out: Path,
    *,
    batch_id: str | None = None,
    until: Callable[[BatchInfo, Plan], bool] | None = None,
    on_settled: Callable[[], None] | None = None,
    route: Override = "auto",
) -> RunResult:
    """Submit ``path`` to a running runtime, wait, collect, and measure all of it.

    ``on_settled`` is called when the batch is settled, before the outputs are collected;
    ``route``: as ``submit --route``.
    """
    sends, polls = track(rt)
    calls_before = Counter(rt.aws_calls.calls)
    reads_before = polls.reads
    cpu0, started, submitted_at = cpu_s(), time.monotonic(), time.time()
    plan = rt.submit(path, batch_id, route=route)
    info = rt.wait(plan, until=until)
    wall, cpu = time.monotonic() - started, cpu_s() - cpu0
    if on_settled:
        on_settled()
    aws = Counter(rt.aws_calls.calls)
    aws.subtract(calls_before)
    aws[("dynamodb", "GetItem")] -= polls.reads - reads_before
    aws = +aws  # drop zeros
    summary, costs = collect(rt, path, plan, info, out, wall)
    return RunResult(
        summary=summary,
        stats=rt.simulator.stats() if rt.simulator else None,
        facts=facts(rt, out),
        info=info,
        wall_s=wall,
        cpu_s=cpu,
        submitted_at=submitted_at,
        sent_at=dict(sends.at),
        done_at=finished_at(costs),
        aws=aws,
        costs=costs,
        path=path,
        plan=plan,
        out=out,
    )


def measure(options: LocalOptions, path: Path, out: Path) -> RunResult:
    with runtime(options) as rt:
        return run_file(rt, path, out)


# --- figures ------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return float(values[0])
    return statistics.quantiles(values, n=1000, method="inclusive")[round(pct * 10) - 1]


@dataclass
class Figure:
    """One figure taken over several runs: the better one is reported, with the spread."""

    name: str
    target: str
    higher_is_better: bool
    unit: str = ""
    fmt: str = "{:,.2f}"
    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def best(self) -> float:
        known = [v for v in self.values if not math.isnan(v)]  # NaN: not measured
        if not known:
            return float("nan")
        return max(known) if self.higher_is_better else min(known)

    def text(self) -> str:
        if not self.values:
            return "n/a"
        best = self.fmt.format(self.best) + self.unit
        if len(self.values) == 1:
            return best + " (1 run)"
        runs = ", ".join(self.fmt.format(v) for v in self.values)
        return f"{best} (runs: {runs})"


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def ops_table(runs: dict[str, tuple[Counter[tuple[str, str]], int]]) -> str:
    """AWS requests per job, by service and operation: ``runs`` maps a column to its
    requests (``RunResult.aws``) and its job count."""
    keys = sorted({k for aws, _ in runs.values() for k in aws})
    rows = [
        [f"{service} {op}"]
        + [f"{aws.get((service, op), 0) / jobs:.3f}" for aws, jobs in runs.values()]
        for service, op in keys
    ]
    rows.append(["**total**"] + [f"{sum(aws.values()) / jobs:.2f}" for aws, jobs in runs.values()])
    return table(rows, ["AWS requests per job", *runs])


def figures_table(figures: Sequence[Figure], limited_by: dict[str, str] | None = None) -> str:
    limited_by = limited_by or {}
    rows = [[f.name, f.target, f.text(), limited_by.get(f.name, "")] for f in figures]
    return table(rows, ["figure", "target", "measured: best (every run)", "what limits it"])


# --- the command line and BENCHMARKS.md ---------------------------------------------


def parser(doc: str | None) -> argparse.ArgumentParser:
    """Every benchmark's flags: --quick, --repeat, --no-write, --workdir."""
    p = argparse.ArgumentParser(
        description=(doc or "").strip().splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    p.add_argument("--repeat", type=int, default=2, help="runs per figure (default 2)")
    p.add_argument(
        "--write",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write the section into BENCHMARKS.md (default: yes, except with --quick)",
    )
    p.add_argument("--workdir", type=Path, default=None, help="scratch space (default: a temp dir)")
    return p


def should_write(args: argparse.Namespace) -> bool:
    return bool(args.write) if args.write is not None else not args.quick


def command_line() -> str:
    stem = Path(sys.argv[0]).stem
    module = "bench" if stem == "__main__" else f"bench.{stem}"
    return shlex.join([".venv/bin/python", "-m", module, *sys.argv[1:]])


def say(text: str = "") -> None:
    print(text, flush=True)


@dataclass
class Section:
    """One benchmark's part of BENCHMARKS.md, between markers so a re-run replaces it."""

    name: str
    title: str
    started: float = field(default_factory=time.time)
    load_before: str = field(default_factory=load_avg)
    parts: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.parts.append(text.strip())
        say(text.strip() + "\n")

    def render(self) -> str:
        took = time.time() - self.started
        when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        head = [
            f"## {self.title}",
            "",
            f"`{command_line()}` — {when}, took {took:.0f} s; machine: {machine()}; "
            f"load average (1/5/15 min) {self.load_before} before, {load_avg()} after "
            "(other engineers' test runs share the two cores).",
        ]
        return "\n".join(head) + "\n\n" + "\n\n".join(self.parts) + "\n"

    def write(self, path: Path = MD_PATH) -> None:
        begin, end = f"<!-- begin {self.name} -->", f"<!-- end {self.name} -->"
        block = f"{begin}\n{self.render()}{end}"
        text = path.read_text() if path.exists() else MD_TITLE + "\n"
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        if pattern.search(text):
            text = pattern.sub(lambda _: block, text)
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
        path.write_text(text)
        say(f"(written to {path.name}, section {self.name})")


def finish(section: Section, args: argparse.Namespace) -> None:
    if should_write(args):
        section.write()


@contextmanager
def workdir(args: argparse.Namespace) -> Iterator[Path]:
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        yield args.workdir
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="chatbatch-bench-") as tmp:
        yield Path(tmp)
