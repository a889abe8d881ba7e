"""Reading a provider batch's result lines, whichever the provider (``ResultLines``):
every line a JSON object whose ``custom_id`` is one of the batch's jobs, each job once;
the provider's reader (``Reader``) turns the line into the job's outcome. A line that
breaks a rule is a ``MalformedResult`` naming the provider batch, the file and the line.
A job with no line at all goes back to the synchronous path (``missing_outcomes``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from chatbatch.provider.batch_api.common import BatchPart, JobOutcome, MalformedResult

# (the line, the job's chatbatch batch id, its custom_id, where the line is) -> outcome
Reader = Callable[[dict[str, Any], str, str, str], JobOutcome]


def keyed_line(text: str | bytes, where: str) -> tuple[dict[str, Any], str]:
    """One result line -> (the line's object, its ``custom_id``); ``where`` names it."""
    try:
        item = json.loads(text)
    except ValueError as err:
        raise MalformedResult(f"{where}: not JSON ({err})") from None
    key = item.get("custom_id") if isinstance(item, dict) else None
    if not isinstance(key, str):
        raise MalformedResult(f"{where}: not an object with a custom_id")
    return item, key


class ResultLines:
    """The outcomes read so far of one provider batch's jobs."""

    def __init__(self, batch_id: str, part: BatchPart) -> None:
        self.batch_id = batch_id
        self.part = part
        self.outcomes: list[JobOutcome] = []
        self.seen: set[str] = set()

    def read(self, content: bytes, source: str, reader: Reader) -> None:
        """Read a JSONL file (``source`` names it in errors) with the provider's reader."""
        for number, text in enumerate(content.splitlines(), start=1):
            if not text.strip():
                continue
            where = f"provider batch {self.batch_id}, {source}, line {number}"
            item, key = keyed_line(text, where)
            job = self.part.ids.job_of(key)
            if job is None:
                raise MalformedResult(f"{where}: custom_id {key!r} is not a job of this batch")
            if key in self.seen:
                raise MalformedResult(f"{where}: custom_id {key!r} has a result already")
            self.seen.add(key)
            try:
                self.outcomes.append(reader(item, job[0], job[1], where))
            except (AttributeError, TypeError, ValueError) as err:
                if isinstance(err, MalformedResult):
                    raise
                raise MalformedResult(f"{where}: {err}") from None


def missing_outcomes(lines: ResultLines, why: str) -> list[JobOutcome]:
    """A ``retry_sync`` outcome for every job of the batch that got no result line."""
    return [
        JobOutcome(job.batch_id or "", job.custom_id, "retry_sync", message=f"no result: {why}")
        for key, job in lines.part.jobs.items()
        if key not in lines.seen
    ]
