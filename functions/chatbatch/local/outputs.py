"""A local run's output files: ``results.jsonl`` and ``errors.jsonl`` (every line of the
input, in input order) and ``costs.jsonl`` (the batch's cost records).

A job that has not finished when the run ends gets an error line that says why it waits:
``paused`` (its model's breaker is open: an account error, with the provider's message
and what to do) or ``deferred`` (waiting for budget). Nothing is dropped: the job is
still queued and finishes when the cause is gone."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import boto3

from chatbatch.client.submit import Plan, iter_jobs
from chatbatch.core.config import Config
from chatbatch.core.jobs import Job
from chatbatch.core.output_lines import OutputLine
from chatbatch.state.breaker import Breaker
from chatbatch.state.store import Store


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
    path: Path, plan: Plan, config: Config, store: Store, paused: Mapping[str, Breaker]
) -> Iterator[tuple[OutputLine, bool]]:
    """(line, is_result) for every line of the file, in input order."""
    errors = {e.line: e for e in plan.errors}
    lines = iter_jobs(path, config, plan.batch_id)
    for number in range(1, plan.lines + 1):
        if number in errors:
            err = errors[number]
            cid = err.custom_id or f"line-{number}"
            yield OutputLine.failure(plan.batch_id, cid, err.code, str(err)), False
            continue
        job = next(lines, None)
        if job is None:
            return
        result = store.get_result(plan.batch_id, job.custom_id)
        if result:
            yield result, True
            continue
        error = store.get_error(plan.batch_id, job.custom_id)
        yield error or _waiting(plan.batch_id, job, paused), False


def write_results(
    path: Path,
    plan: Plan,
    out: Path,
    config: Config,
    store: Store,
    paused: Mapping[str, Breaker] | None = None,
) -> tuple[list[int], int]:
    """``results.jsonl`` and ``errors.jsonl`` under ``out``; the results' latencies and
    retries (for the summary). ``paused``: the open breakers, by model name."""
    out.mkdir(parents=True, exist_ok=True)
    latencies: list[int] = []
    retries = 0
    with (out / "results.jsonl").open("w") as results, (out / "errors.jsonl").open("w") as errs:
        for line, ok in _outputs(path, plan, config, store, paused or {}):
            (results if ok else errs).write(line.to_line() + "\n")
            if ok and line.chatbatch:
                latencies.append(line.chatbatch.latency_ms)
                retries += max(0, line.chatbatch.attempts - 1)
    return latencies, retries


def write_costs(path: Path, bucket: str, batch_id: str) -> None:
    """The batch's cost records, one per line, into ``path``."""
    s3 = boto3.client("s3")
    with path.open("w") as costs:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="costs/"):
            for obj in page.get("Contents", []):
                if f"/{batch_id}/" in obj["Key"]:
                    body = s3.get_object(Bucket=bucket, Key=obj["Key"])
                    costs.write(body["Body"].read().decode().strip() + "\n")
