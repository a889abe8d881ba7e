"""A local run's output files: ``results.jsonl`` (answers and the provider's HTTP error
answers) and ``errors.jsonl`` (failures without an HTTP answer), together every line of
the input, in input order; and ``costs.jsonl`` (the batch's cost records). Both read the
batch's flush objects, orphan lines dropped (``client/flush_objects.py``). A file of
Anthropic lines gets one ``results.jsonl`` in Anthropic's results shape, every line in it.

Each file is written beside its final name and then renamed over it, so a process killed
while writing leaves the previous version whole (``chatbatch.local.live_outputs`` keeps
that version current while the run goes on).

A job that has not finished when the run ends gets an error line that says why it waits:
``paused`` (its model's breaker is open: an account error, with the provider's message
and what to do) or ``deferred`` (waiting for budget). Nothing is dropped: the job is
still queued and finishes when the cause is gone."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import boto3

from chatbatch.client.flush_objects import cost_lines, index_results
from chatbatch.client.submit import Plan, iter_jobs
from chatbatch.core.config import Config
from chatbatch.core.jobs import Job, JobError
from chatbatch.core.output_lines import OutputLine
from chatbatch.core.private_files import private_dir, private_open
from chatbatch.state.batches import Batches
from chatbatch.state.breaker import Breaker
from chatbatch.state.store import Store
from chatbatch.translate.batch_results import written


@contextmanager
def replacing(path: Path) -> Iterator[IO[str]]:
    """A private file (0600) written beside ``path``, synced, then renamed over it."""
    partial = path.with_name(path.name + ".partial")
    with private_open(partial) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)


def invalid_line(batch_id: str, err: JobError) -> OutputLine:
    """The error line of an input line that is not a valid job."""
    return OutputLine.failure(batch_id, err.custom_id or f"line-{err.line}", err.code, str(err))


def is_batch_cost(key: str, batch_id: str) -> bool:
    """Whether ``key`` is one of the batch's cost records (``costs/dt=<day>/<batch>/...``)."""
    parts = key.split("/")
    return len(parts) > 3 and parts[0] == "costs" and parts[2] == batch_id


@dataclass
class Figures:
    """The results' latencies and retries, for the summary."""

    latencies: list[int] = field(default_factory=list)
    retries: int = 0

    def add(self, result: OutputLine) -> None:
        """Count an answer (a provider's HTTP error answer is no answer)."""
        if result.chatbatch and result.response and result.response.status_code == 200:
            self.latencies.append(result.chatbatch.latency_ms)
            self.retries += max(0, result.chatbatch.attempts - 1)

    @classmethod
    def of_file(cls, path: Path) -> Figures:
        """The figures of the results in a ``results.jsonl`` of either form (none if it is
        missing): an Anthropic-form line counts when it ``succeeded``."""
        figures = cls()
        if path.exists():
            with path.open() as lines:
                for text in lines:
                    if not text.strip():
                        continue
                    data = json.loads(text)
                    if "result" not in data:
                        figures.add(OutputLine.model_validate(data))
                    elif data["result"].get("type") == "succeeded":
                        facts = data.get("chatbatch") or {}
                        figures.latencies.append(int(facts.get("latency_ms", 0)))
                        figures.retries += max(0, int(facts.get("attempts", 1)) - 1)
        return figures


def _waiting(batch_id: str, job: Job, paused: Mapping[str, Breaker]) -> OutputLine:
    """The error line of a job still waiting when the run ends."""
    breaker = paused.get(job.model)
    if breaker is None:
        message = "waiting for budget; it resumes when budget is available"
        return OutputLine.failure(batch_id, job.custom_id, "deferred", message)
    status = f"HTTP {breaker.status} " if breaker.status else ""
    message = (
        f"model {job.model} is paused by an account error ({breaker.reason}: {status}"
        f"{breaker.message}); fix the key, access or credit, then `chatbatch resume "
        f"{job.model}` (or wait for the probe): the job is still queued"
    )
    return OutputLine.failure(batch_id, job.custom_id, "paused", message)


def _outputs(
    path: Path,
    plan: Plan,
    config: Config,
    store: Store,
    batches: Batches,
    paused: Mapping[str, Breaker],
) -> Iterator[OutputLine]:
    """The stored line of every line of the file, in input order (the committed result,
    else the error record, else why it waits)."""
    index = index_results(boto3.client("s3"), store, batches, plan.batch_id)
    errors = {e.line: e for e in plan.errors}
    lines = iter_jobs(path, config, plan.batch_id)
    for number in range(1, plan.lines + 1):
        if number in errors:
            yield invalid_line(plan.batch_id, errors[number])
            continue
        job = next(lines, None)
        if job is None:
            return
        result = index.result(job.custom_id)
        yield (
            (OutputLine.model_validate_json(result) if result else None)
            or store.get_error(plan.batch_id, job.custom_id)
            or _waiting(plan.batch_id, job, paused)
        )


def write_results(
    path: Path,
    plan: Plan,
    out: Path,
    config: Config,
    store: Store,
    batches: Batches,
    paused: Mapping[str, Breaker] | None = None,
) -> tuple[list[int], int]:
    """``results.jsonl`` and ``errors.jsonl`` under ``out`` (an Anthropic-form batch: one
    ``results.jsonl`` in Anthropic's results shape, as Anthropic writes); the results'
    latencies and retries (for the summary). ``paused``: the open breakers, by model name."""
    private_dir(out)
    figures = Figures()
    with ExitStack() as files:
        results = files.enter_context(replacing(out / "results.jsonl"))
        errs = (
            files.enter_context(replacing(out / "errors.jsonl"))
            if plan.form == "openai"
            else results
        )
        for line in _outputs(path, plan, config, store, batches, paused or {}):
            text, ok = written(plan.form, line)
            (results if ok else errs).write(text + "\n")
            figures.add(line)
    return figures.latencies, figures.retries


def write_costs(path: Path, bucket: str, batch_id: str, batches: Batches) -> None:
    """The batch's cost records, one per line, into ``path`` (a job's once: an orphan
    record beside it is dropped, ``client/flush_objects.py``)."""
    with replacing(path) as costs:
        for text in cost_lines(boto3.client("s3"), bucket, batches, batch_id):
            costs.write(text + "\n")
