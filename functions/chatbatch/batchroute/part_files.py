"""A part's input file, ``parts/<part>.jsonl``: one line per job, the job as queued
(``job``: ``Job.to_line``) and its line as the provider is sent it (``line``). Written
before the part's record, so a record always has its file: a run that finds a record it
did not finish reads its jobs and its exact lines back from here (``read``), and sends the
same bytes to the provider. The jobs a part no longer holds (left out when it was
recorded) are filtered by their items, which name the part (``Parts``)."""

from __future__ import annotations

import json

from chatbatch.core.config import Config
from chatbatch.core.job_lines import parse_job
from chatbatch.provider.batch_api import BatchPart, request_of
from chatbatch.state.parts import Part
from chatbatch.state.store import Store

PARTS_PREFIX = "parts/"


def part_file_key(part_id: str) -> str:
    return f"{PARTS_PREFIX}{part_id}.jsonl"


def write(store: Store, part_id: str, part: BatchPart) -> None:
    lines = [
        json.dumps({"job": json.loads(r.job.to_line()), "line": r.line}, separators=(",", ":"))
        for r in part.requests
    ]
    store.put_lines(part_file_key(part_id), lines)


def read(store: Store, record: Part, config: Config) -> BatchPart | None:
    """The part as written (None: no file, which a record never lacks)."""
    lines = store.get_lines(part_file_key(record.part_id))
    if lines is None:
        return None
    part = BatchPart(api=record.api, provider=record.provider, model=record.model or None)
    for text in lines:
        entry = json.loads(text)
        part.add(request_of(parse_job(entry["job"], config), entry["line"]))
    return part
