"""Recover: finish the parts a run left ``creating`` (it crashed, or the provider did not
take the batch), before anything new is gathered (docs/batch-route.md).

The record always has its input file (``part_files``: written first). What the part
still holds is read from its jobs' items (``batched`` naming it). Then:

- no reservation of the part exists: the run stopped before step 3, so its messages were
  never deleted: the part is abandoned (its jobs ``new`` again) and the messages, back on
  the queue, gather again;
- its reservations exist: the provider batch is looked for before one is created, so a
  part is never billed twice: at OpenAI by the part id in the batch's ``metadata``; at
  Anthropic (no metadata) by the first result's ``custom_id``, once a batch created since
  the record has ended (until then the record waits). Found: its id is recorded; none:
  the batch is created now; after ``GIVE_UP_S`` without one (the provider refusing
  it), its jobs go to the synchronous path instead (``give_up``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aws_lambda_powertools import Logger

from chatbatch.batchroute import part_files
from chatbatch.batchroute.clients import BatchClients
from chatbatch.batchroute.crash import crash_point
from chatbatch.batchroute.gather import PART_METADATA, held_jobs, open_at_provider
from chatbatch.core.config import Priority
from chatbatch.provider.batch_api import BatchApi, BatchPart, BatchState
from chatbatch.state.batches import JobState
from chatbatch.state.parts import Part
from chatbatch.state.sender import Sender
from chatbatch.worker.services import Services

logger = Logger(service="chatbatch")

FOUND_MARGIN_S = 300  # a provider's clock may be behind ours: batches this much older count
GIVE_UP_S = 3600  # a part the provider has not taken in an hour goes to the synchronous path


def held_keys(s: Services, record: Part, part: BatchPart) -> list[tuple[str, str]]:
    """The (batch, custom_id) of the jobs of ``part``'s file that the part still holds."""
    by_batch: dict[str, list[str]] = {}
    for request in part.requests:
        by_batch.setdefault(request.job.batch_id or "", []).append(request.job.custom_id)
    held = []
    for batch_id, custom_ids in by_batch.items():
        for job in s.batches.jobs(batch_id, custom_ids):
            if job.state is JobState.batched and job.part == record.part_id:
                held.append((batch_id, job.custom_id))
    return held


def recover(
    s: Services,
    clients: BatchClients,
    record: Part,
    known: set[str],
    clock: Callable[[], float] = time.time,
) -> None:
    """Take ``record`` (``creating``) on to ``open``, or abandon it. ``known``: the
    provider batch ids other parts hold (never this part's)."""
    part = part_files.read(s.store, record, s.config)
    if part is None:  # cannot be: the file is written before the record
        logger.error("a part's record has no input file", extra={"part": record.part_id})
        return
    keys = held_keys(s, record, part)
    if not s.budget.part_held(record.part_id, record.batches):
        logger.info("abandoning a part that was never reserved", extra={"part": record.part_id})
        s.parts.abandon(record.part_id, held_jobs(keys))
        return
    client = clients.of(record.provider, record.api)
    found = find(client, record, part, known)
    crash_point("recover_after_find")
    if found is None:
        return  # a candidate has not ended yet: look again next run
    if found:
        s.parts.opened(record.part_id, found)
        return
    if clock() - record.created_at > GIVE_UP_S:
        give_up(s, record, part, keys)
        return
    open_at_provider(s, clients, record, part)


def give_up(s: Services, record: Part, part: BatchPart, keys: list[tuple[str, str]]) -> None:
    """A part the provider would not take for ``GIVE_UP_S``: its jobs go to the
    synchronous path (sent first: a crash after leaves duplicates, which the worker runs
    once, never a lost job), its money back, then its jobs leave it."""
    held = set(keys)
    sender = Sender(s.sqs, s.store, s.resources)
    jobs = [r.job for r in part.requests if (r.job.batch_id or "", r.job.custom_id) in held]
    for priority in Priority:
        mine = [job for job in jobs if (job.priority or s.config.defaults.priority) is priority]
        for start in range(0, len(mine), 10):
            sender.send(priority, mine[start : start + 10])
    crash_point("give_up_after_sends")
    logger.warning(
        "a part no provider batch was made for goes to the synchronous path",
        extra={"part": record.part_id, "jobs": len(jobs)},
    )
    s.budget.close_part(s.budget.part_held(record.part_id, record.batches).values())
    crash_point("give_up_after_close")
    s.parts.abandon(record.part_id, held_jobs(keys), to_sync=True)


def find(client: BatchApi, record: Part, part: BatchPart, known: set[str]) -> str | None:
    """The provider batch created for ``record``: its id; "" when the provider has none;
    None when that cannot be told yet (an Anthropic batch that may be it has not ended)."""
    waiting = False
    for state in client.listed(record.created_at - FOUND_MARGIN_S):
        if state.id in known:
            continue
        if record.api == "openai":
            if state.metadata.get(PART_METADATA) == record.part_id:
                return state.id
            continue
        if not _may_be(state, part):
            continue
        if not state.ended:
            waiting = True
            continue
        first = client.first_custom_id(state.id)  # type: ignore[attr-defined]
        if first is not None and first in part.ids:
            return state.id
    return None if waiting else ""


def _may_be(state: BatchState, part: BatchPart) -> bool:
    """An Anthropic batch with as many requests as the part sent."""
    return sum(state.counts.values()) == len(part.requests)
