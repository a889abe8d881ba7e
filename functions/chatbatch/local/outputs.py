"""A local run's output files: ``results.jsonl`` and ``errors.jsonl`` (every line of the
input, in input order) and ``costs.jsonl`` (the batch's cost records)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3

from chatbatch.client.submit import Plan, iter_jobs
from chatbatch.core.config import Config
from chatbatch.core.output_lines import OutputLine
from chatbatch.state.store import Store


def _outputs(
    path: Path, plan: Plan, config: Config, store: Store
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
        yield (
            (
                error
                or OutputLine.failure(
                    plan.batch_id,
                    job.custom_id,
                    "deferred",
                    "waiting for budget; it resumes when budget is available",
                )
            ),
            False,
        )


def write_results(
    path: Path, plan: Plan, out: Path, config: Config, store: Store
) -> tuple[list[int], int]:
    """``results.jsonl`` and ``errors.jsonl`` under ``out``; the results' latencies and
    retries (for the summary)."""
    out.mkdir(parents=True, exist_ok=True)
    latencies: list[int] = []
    retries = 0
    with (out / "results.jsonl").open("w") as results, (out / "errors.jsonl").open("w") as errs:
        for line, ok in _outputs(path, plan, config, store):
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
