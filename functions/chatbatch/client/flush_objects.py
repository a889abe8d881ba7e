"""Reading results and cost records from their flush objects, orphans dropped.

A worker invocation writes its jobs' results and cost records as lines of flush objects
(``state/store.py``: ``results/<batch>/<flush>.jsonl``, ``costs/dt=<day>/<batch>/<flush>
.jsonl``; a job finished before them has its own one-line ``.json`` object, read as a
one-line file). A job found in two objects has one committed line: the one in the object
of the flush its state item names (``JobRecord.flush``; none: its own ``.json`` object).
The other is an orphan, a copy whose final transaction lost, and is dropped here. Only a
job seen twice costs a look at its state item (orphans are rare: ``worker/finals.py``).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from chatbatch.client.listing import in_order, list_keys
from chatbatch.core.output_lines import OutputLine
from chatbatch.state.batches import Batches
from chatbatch.state.store import Store, flush_of, object_lines, result_key, results_prefix

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

Location = tuple[str, int]  # an object's key, a line's index in it
CACHED_OBJECTS = 256  # objects of about ten lines each: what ``collect`` keeps at hand


def committed_key(keys: Sequence[str], flush: str | None) -> str | None:
    """Of the objects holding a line of a job, the one of the flush its state names (a job
    with none: its own ``.json`` object); None when none is (every line an orphan)."""
    return next((key for key in keys if flush_of(key) == flush), None)


def resolve(batches: Batches, batch_id: str, seen: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """For the jobs of ``batch_id`` seen in more than one object (custom_id -> keys): the
    object of each one's committed line (a job whose lines are all orphans has none)."""
    twice = [custom_id for custom_id, keys in seen.items() if len(keys) > 1]
    chosen: dict[str, str] = {}
    for job in batches.jobs(batch_id, twice) if twice else []:
        key = committed_key(seen[job.custom_id], job.flush)
        if key is not None:
            chosen[job.custom_id] = key
    return chosen


class ObjectCache:
    """The lines of the objects read last (least recently used ones go), read through
    ``store``; safe to share between threads."""

    def __init__(self, store: Store, size: int = CACHED_OBJECTS) -> None:
        self._store = store
        self._size = size
        self._lines: OrderedDict[str, list[str]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: str, lines: list[str]) -> None:
        with self._lock:
            self._lines[key] = lines
            self._lines.move_to_end(key)
            while len(self._lines) > self._size:
                self._lines.popitem(last=False)

    def lines(self, key: str) -> list[str]:
        """The object's lines (none if it is gone)."""
        with self._lock:
            if key in self._lines:
                self._lines.move_to_end(key)
                return self._lines[key]
        lines = self._store.get_lines(key) or []
        self.put(key, lines)
        return lines


@dataclass
class ResultIndex:
    """Where each finished job of a batch has its committed result line."""

    cache: ObjectCache
    keys: list[str] = field(default_factory=list)  # the batch's results objects, as listed
    where: dict[str, Location] = field(default_factory=dict)  # custom_id -> its line

    def result(self, custom_id: str) -> str | None:
        """The job's committed result line (its text), or None if it has none."""
        at = self.where.get(custom_id)
        if at is None:
            return None
        lines = self.cache.lines(at[0])
        return lines[at[1]] if at[1] < len(lines) else None

    def in_listing_order(self) -> Iterator[str]:
        """Every committed result line, object by object (each object read once more at
        most: the last ones read are still cached)."""
        for key in self.keys:
            for index, text in enumerate(self.cache.lines(key)):
                if self.where.get(_custom_id(text)) == (key, index):
                    yield text


def index_results(
    s3: S3Client, store: Store, batches: Batches, batch_id: str, threads: int = 16
) -> ResultIndex:
    """One pass over the batch's results objects (a GET each, on ``threads`` threads):
    each job's committed line, a job seen in two objects resolved by its state item."""
    index = ResultIndex(ObjectCache(store))
    index.keys = list(list_keys(s3, store.bucket, results_prefix(batch_id)))
    seen: dict[str, list[Location]] = {}
    for key, lines in zip(index.keys, in_order(index.keys, store.get_lines, threads), strict=True):
        index.cache.put(key, lines or [])
        for at, text in enumerate(lines or []):
            seen.setdefault(_custom_id(text), []).append((key, at))
    chosen = resolve(batches, batch_id, {c: [k for k, _ in found] for c, found in seen.items()})
    for custom_id, found in seen.items():
        if len(found) == 1:
            index.where[custom_id] = found[0]
        elif custom_id in chosen:
            index.where[custom_id] = next(at for at in found if at[0] == chosen[custom_id])
    return index


def committed_result(
    store: Store, batches: Batches, batch_id: str, custom_id: str
) -> OutputLine | None:
    """One job's committed result, found through its state item (a GET of one object)."""
    [job] = batches.jobs(batch_id, [custom_id])
    if job.flush is not None:
        return store.result_in(batch_id, job.flush, custom_id)
    text = store.get_text(result_key(batch_id, custom_id))
    return OutputLine.model_validate_json(text) if text else None


class CostLines:
    """Cost record lines from any number of objects. A job's record (no ``attempt``)
    found in two objects is kept once, the one of the job's flush: ``add`` holds the
    jobs' records back and ``resolved`` gives them once all are read."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, str], list[tuple[str, str]]] = {}  # job -> (key, line)

    def add(self, key: str, text: str) -> str | None:
        """A record read from ``key``: itself when it counts as read (an unread call's
        record), else None (held until ``resolved``)."""
        data = json.loads(text)
        if data.get("attempt") is not None:
            return text
        self._held.setdefault((data["batch_id"], data["custom_id"]), []).append((key, text))
        return None

    def resolved(self, batches: Batches | None) -> Iterator[str]:
        """The held records, each job's once; ``batches`` tells which of a job's records
        counts when it has two (required then: a clear error without it)."""
        twice: dict[str, dict[str, list[tuple[str, str]]]] = {}
        for (batch_id, custom_id), found in self._held.items():
            if len(found) == 1:
                yield found[0][1]
            else:
                twice.setdefault(batch_id, {})[custom_id] = found
        if twice and batches is None:
            raise ValueError(
                "a job has cost records in two objects (an orphan of a copy whose final "
                "transaction lost): pass the deployment's job states (batches=) to tell "
                "which one counts"
            )
        for batch_id, jobs in twice.items():
            assert batches is not None
            seen = {custom_id: [key for key, _ in found] for custom_id, found in jobs.items()}
            chosen = resolve(batches, batch_id, seen)
            for custom_id, found in jobs.items():
                yield from (text for key, text in found if key == chosen.get(custom_id))


def cost_lines(
    s3: S3Client, bucket: str, batches: Batches, batch_id: str | None = None
) -> Iterator[str]:
    """Every cost record line in the bucket (of ``batch_id``'s jobs, or all), each job's
    once: its orphans dropped."""
    lines = CostLines()
    for key in list_keys(s3, bucket, "costs/"):
        parts = key.split("/")  # costs/dt=<day>/<batch>/...
        if batch_id is not None and (len(parts) < 4 or parts[2] != batch_id):
            continue
        for text in object_lines(s3.get_object(Bucket=bucket, Key=key)["Body"].read()):
            if (now := lines.add(key, text)) is not None:
                yield now
    yield from lines.resolved(batches)


def _custom_id(text: str) -> str:
    custom_id: str = json.loads(text)["custom_id"]
    return custom_id
