"""Batches and job states in DynamoDB: the registry, the counters, exactly-once outcomes.

Items (single table, see ``resources``):

- ``pk=batch#<id>, sk=meta``: the batch: ``total`` (from submit), ``priority``,
  ``budget_nanos``, ``checksum`` (of the file it was submitted from: registering it
  again from another file is refused), ``registrant`` (the principal id that registered
  it: the worker refuses other senders' messages for it), ``created``, ``cancelled`` and
  the counters
  ``succeeded``, ``failed``, ``deferred``, ``throttled``, ``paused``, ``dead_lettered``,
  ``cancelled_jobs``, ``cost_nanos``, ``prompt_tokens``, ``completion_tokens``,
  ``provider_calls``, ``retried`` (jobs sent again by ``chatbatch retry``) (the tokens
  are what the provider billed, reasoning included), ``estimated_calls`` and
  ``estimated_nanos`` (calls the provider may have billed whose usage never came back:
  booked at their worst case, in ``cost_nanos`` and ``provider_calls`` too, in neither
  token total), and ``cached_jobs`` and
  ``cache_saved_tokens`` (succeeded jobs answered from the response cache, and the prompt +
  completion tokens of their stored answers: billed to no one, so in neither token total),
  and the completion event's marks (``state.completion``), and ``counter_shards`` when the
  batch was registered with its counters sharded (absent: 1, the counters are here).
- ``pk=batch#<id>#c<k>, sk=count`` (k < ``counter_shards``, only when it is 2 or more): a
  shard of the batch's counters, the same attributes plus ``writes`` (additions made to
  it). Each invocation adds to one shard, picked at random, so no partition takes every
  job's writes (``core.scale``); readers add the meta item's counters and every shard's.
- ``pk=job#<batch>#<id_key(custom_id)>, sk=state``: a job's state: ``deferred`` (budget),
  ``throttled`` (rate limit), ``paused`` (account error) or ``dead_lettered`` while it
  waits, then one of the
  terminal ``succeeded``, ``failed``, ``cancelled``; ``retrying`` after ``chatbatch
  retry`` sent a failed or dead-lettered job again (queued or running, like a new job).
  A job that failed keeps its ``error_code``; ``retries`` counts the times it was sent
  again.

A job's outcome is written in one transaction with its counters, on the condition that
the job's state is still the one the worker read. A redelivered or duplicated message
therefore moves a counter at most once: the loser of the race sees the condition fail
and does nothing. ``deferred``, ``throttled``, ``paused`` and ``dead_lettered`` are gauges: entering
the state adds one, leaving it (resumed, redriven) takes one away. Leaving a terminal state
(only ``retry`` does: ``failed -> retrying``) takes one from its counter too, and the job
counts again when it ends.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, cast

from botocore.exceptions import ClientError
from pydantic import BaseModel

from chatbatch.core.jobs import id_key
from chatbatch.core.resources import TABLE_PK, TABLE_SK, TABLE_TTL
from chatbatch.state.ddb import adds, error_code, n, plain, s, scan_items, transact

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

JOB_TTL_S = 30 * 86_400
# The counters: what ``count_items`` adds and a reader sums over the meta item and shards.
COUNTERS = (
    "succeeded",
    "failed",
    "deferred",
    "throttled",
    "paused",
    "batched",
    "dead_lettered",
    "cancelled_jobs",
    "cost_nanos",
    "prompt_tokens",
    "completion_tokens",
    "provider_calls",
    "estimated_calls",
    "estimated_nanos",
    "cached_jobs",
    "cache_saved_tokens",
    "retried",
)
WRITES = "writes"  # a shard's count of additions: two reads of it differ if any came between
CONFIRM_READS = 5  # reads of a sharded batch that looks complete, until two agree
# the deployment's salt for default batch ids (``Batches.id_salt``)
SALT_KEY = {TABLE_PK: {"S": "deployment#salt"}, TABLE_SK: {"S": "meta"}}


class TransactionRefused(RuntimeError):
    """A job's final transaction failed on an item other than its state (e.g. the budget
    reservation was reclaimed): nothing was written; a redelivery starts over."""


class SubmittedFromAnotherFile(ValueError):
    """The batch id is registered already, from a file with another checksum: sending
    this file under it would mix two files' jobs (and ``collect`` would return the other
    file's answers for jobs with the same custom_id)."""

    def __init__(self, batch_id: str, registered: str, checksum: str) -> None:
        self.batch_id, self.registered, self.checksum = batch_id, registered, checksum
        super().__init__(
            f"batch {batch_id!r} was submitted from another file (checksum "
            f"{registered[:12]}, this file {checksum[:12]}): choose another batch id"
        )


class RegisteredByAnotherProducer(ValueError):
    """The batch id is registered already by another principal: only its registrant (any
    session of the same role or user) may write it."""

    def __init__(self, batch_id: str, registrant: str) -> None:
        self.batch_id, self.registrant = batch_id, registrant
        super().__init__(
            f"batch {batch_id!r} was registered by another producer ({registrant}): only it "
            "may send its jobs; choose another batch id"
        )


class JobState(StrEnum):
    new = "new"  # no item yet
    deferred = "deferred"  # waiting for budget
    throttled = "throttled"  # waiting for rate-limit capacity
    paused = "paused"  # waiting for an account error to be fixed (the model's breaker)
    batched = "batched"  # in a provider's batch (the batch route: ``state/parts.py``)
    dead_lettered = "dead_lettered"
    retrying = "retrying"  # failed or dead-lettered, then sent again by ``chatbatch retry``
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in {JobState.succeeded, JobState.failed, JobState.cancelled}

    @property
    def gauge(self) -> str | None:
        """The counter that holds jobs while they are in this state, if any."""
        waiting = (
            JobState.deferred,
            JobState.throttled,
            JobState.paused,
            JobState.batched,
            JobState.dead_lettered,
        )
        return self.value if self in waiting else None

    @property
    def counter(self) -> str:
        return "cancelled_jobs" if self is JobState.cancelled else self.value


RETRY_FROM = (JobState.failed, JobState.dead_lettered)  # what ``chatbatch retry`` sends again


class JobRecord(BaseModel):
    """A job's item: its state, its last error's code, how many times it was retried, and
    the flush whose objects hold its result (``worker/finals.py``; None for a job that
    has none, or whose result is its own ``.json`` object, from before flush objects)."""

    custom_id: str
    state: JobState = JobState.new
    error_code: str | None = None
    retries: int = 0
    flush: str | None = None
    # while ``batched``: the provider batch's part (``state/parts.py``); on a ``new`` job,
    # the part that sent it to the synchronous path (a late copy is not gathered again)
    part: str | None = None


class BatchInfo(BaseModel):
    batch_id: str
    total: int | None = None
    priority: str | None = None
    budget_nanos: int | None = None
    checksum: str | None = None
    registrant: str | None = None  # the principal id that registered it (None: not registered)
    form: Literal["openai", "anthropic"] = "openai"  # its lines': the shape of its results
    created: float | None = None
    cancelled: bool = False
    counter_shards: int = 1  # as registered: the shard items its counters are spread over
    succeeded: int = 0
    failed: int = 0
    deferred: int = 0
    throttled: int = 0
    paused: int = 0
    batched: int = 0  # in a provider's batch, waiting for its answer (the batch route)
    dead_lettered: int = 0
    cancelled_jobs: int = 0
    cost_nanos: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    provider_calls: int = 0
    estimated_calls: int = 0
    estimated_nanos: int = 0
    cached_jobs: int = 0
    cache_saved_tokens: int = 0
    retried: int = 0  # jobs sent again by ``chatbatch retry``: numbers the batch's completions
    # the "Batch Completed" event (``state.completion``): claimed for a completion, then sent
    completion_gen: int | None = None
    completion_claimed_at: float | None = None
    completion_sent_gen: int | None = None
    completed_at: float | None = None

    @property
    def waiting(self) -> int:
        """Jobs waiting outside the workers: for budget, rate-limit capacity, a paused
        model, or a provider's batch."""
        return self.deferred + self.throttled + self.paused + self.batched

    @property
    def finished(self) -> int:
        """Jobs in a terminal state (dead-lettered counts until it is redriven)."""
        return self.succeeded + self.failed + self.cancelled_jobs + self.dead_lettered

    @property
    def unfinished(self) -> int | None:
        """Jobs of the registered ``total`` not final yet, waiting ones too (None: no total)."""
        return max(0, self.total - self.finished) if self.total is not None else None

    @property
    def complete(self) -> bool:
        """Every job of the registered ``total`` is final (never, without a total)."""
        return self.total is not None and self.finished >= self.total


def batch_key(batch_id: str) -> dict[str, Any]:
    return {TABLE_PK: s(f"batch#{batch_id}"), TABLE_SK: s("meta")}


def counter_key(batch_id: str, shard: int) -> dict[str, Any]:
    """A shard of a batch's counters: a partition key of its own (DynamoDB's write limit
    is per partition). Batch ids hold no ``#``, so the key names its batch."""
    return {TABLE_PK: s(f"batch#{batch_id}#c{shard}"), TABLE_SK: s("count")}


def pick_shard(counter_shards: int) -> int | None:
    """The counter item a writer adds to: None (the meta item) for an unsharded batch, else
    a shard at random; over many invocations each shard takes an even share."""
    return random.randrange(counter_shards) if counter_shards > 1 else None


def job_pk(batch_id: str, custom_id: str) -> str:
    """A job's partition key: by its ``id_key``, so any custom_id fits (and is short)."""
    return f"job#{batch_id}#{id_key(custom_id)}"


def job_key(batch_id: str, custom_id: str) -> dict[str, Any]:
    return {TABLE_PK: s(job_pk(batch_id, custom_id)), TABLE_SK: s("state")}


class Batches:
    """Batch registry, counters and job states on the shared table.

    ``counter_shards``: the shards a batch registered through this object gets
    (``core.scale.plan(config).counter_shards``); a batch keeps the count it was registered
    with, whatever the config says later."""

    def __init__(self, ddb: DynamoDBClient, table: str, *, counter_shards: int = 1) -> None:
        self._ddb = ddb
        self._table = table
        self._counter_shards = counter_shards

    # --- reads -------------------------------------------------------------------

    def prefetch(
        self, jobs: Iterable[tuple[str, str]]
    ) -> tuple[dict[tuple[str, str], JobState], dict[str, BatchInfo]]:
        """The states of many jobs and their batches in as few reads as possible: the
        shards of this deployment's count are read with them, the rest of a batch
        registered with more (if any) in a second read. The counters are summed over the
        shards but are not one instant's (see ``get``): the worker decides nothing on them."""
        records, batches = self.prefetch_records(jobs)
        return {key: record.state for key, record in records.items()}, batches

    def prefetch_records(
        self, jobs: Iterable[tuple[str, str]]
    ) -> tuple[dict[tuple[str, str], JobRecord], dict[str, BatchInfo]]:
        """``prefetch`` with each job's whole record (its part, its flush), not its state
        alone."""
        jobs = list(dict.fromkeys(jobs))
        batch_ids = list(dict.fromkeys(b for b, _ in jobs))
        guess = self._counter_shards if self._counter_shards > 1 else 0
        keys = [job_key(b, c) for b, c in jobs] + [batch_key(b) for b in batch_ids]
        keys += [counter_key(b, k) for b in batch_ids for k in range(guess)]
        found = self._get_many(keys)
        more = [
            counter_key(b, k)
            for b in batch_ids
            for k in range(guess, _shards(found.get(f"batch#{b}")))
        ]
        found |= self._get_many(more)
        records = {(b, c): _record(c, found.get(job_pk(b, c), {})) for b, c in jobs}
        batches = {b: self._summed(b, found) for b in batch_ids}
        return records, batches

    def jobs(self, batch_id: str, custom_ids: Iterable[str]) -> list[JobRecord]:
        """The items of a batch's jobs (a job without one is ``new``), in the order given."""
        ids = list(dict.fromkeys(custom_ids))
        found = self._get_many([job_key(batch_id, c) for c in ids])
        return [_record(c, found.get(job_pk(batch_id, c), {})) for c in ids]

    def _get_many(self, keys: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Items by partition key (consistent reads, 100 keys a call), plain."""
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(keys), 100):
            pending: Any = {
                self._table: {"Keys": keys[start : start + 100], "ConsistentRead": True}
            }
            while pending:
                reply = self._ddb.batch_get_item(RequestItems=pending)
                for item in reply["Responses"].get(self._table, []):
                    found[item[TABLE_PK]["S"]] = plain(item)
                pending = reply.get("UnprocessedKeys") or None
        return found

    def get(self, batch_id: str) -> BatchInfo | None:
        """The batch, its counters summed over its shards, from consistent reads.

        The completion announcer (``worker/completion.py``) reads after its own commit and
        must see the batch complete when that commit moved the last counter. Each commit's
        addition lands on one item; a consistent read of an item returns every write
        acknowledged before the read began. Take the commits that moved the counters: the
        one acknowledged last was acknowledged after all the others, and its worker reads
        every shard after that, so it sees them all, whichever shards they went to.

        Reads of several items are no snapshot, though: a shard read early and another
        read late can add up to totals that never held at once (a ``retry`` taking a job
        from ``failed`` on one shard while another job succeeds on another could read as
        complete). So a sharded batch that reads complete is read again until two reads
        agree (each shard's ``writes`` only grows: equal reads mean nothing was written in
        between, so the totals held at one instant); after ``CONFIRM_READS`` the last is
        returned (its counters were moving all along). With one shard it is one read."""
        reply = self._ddb.get_item(
            TableName=self._table, Key=batch_key(batch_id), ConsistentRead=True
        )
        item = reply.get("Item")
        if not item:
            return None
        meta = plain(item)
        shards = _shards(meta)
        if shards == 1:
            return self._info(batch_id, meta)
        keys = [batch_key(batch_id), *(counter_key(batch_id, k) for k in range(shards))]
        found = {f"batch#{batch_id}": meta} | self._get_many(keys[1:])
        for _ in range(CONFIRM_READS):
            info = self._summed(batch_id, found)
            if not info.complete:
                return info
            again = self._get_many(keys)
            if again == found:
                return info
            found = again
        return self._summed(batch_id, found)

    def list_all(self) -> list[BatchInfo]:
        """Every batch of the deployment, oldest first.

        No index names the batch items, so they are found by a Scan, page by page, each
        item returning only the batch's fields. It reads the whole table (billed by the size
        read, job states included): for a person's command (``chatbatch batches``), never
        the worker's path. See docs/everyday-commands.md for the index it could use.
        The same scan returns the batches' counter shards (``count`` items), summed into
        their batch's: one pass, however many batches are sharded."""
        fields = [name for name in BatchInfo.model_fields if name != "batch_id"]
        metas: dict[str, dict[str, Any]] = {}
        shards: dict[str, list[dict[str, Any]]] = {}
        for item in scan_items(
            self._ddb, self._table, "batch#", ("meta", "count"), attributes=fields
        ):
            batch_id, _, shard = item[TABLE_PK].removeprefix("batch#").partition("#")
            if shard:
                shards.setdefault(batch_id, []).append(item)
            else:
                metas[batch_id] = item
        out = [self._info(b, meta, shards.get(b, ())) for b, meta in metas.items()]
        return sorted(out, key=lambda b: b.created or 0)

    def _summed(self, batch_id: str, found: Mapping[str, dict[str, Any]]) -> BatchInfo:
        """The batch in ``found`` (items by partition key), its shards' counters added."""
        meta = found.get(f"batch#{batch_id}")
        keys = (counter_key(batch_id, k)[TABLE_PK]["S"] for k in range(_shards(meta)))
        return self._info(batch_id, meta, [found[pk] for pk in keys if pk in found])

    @staticmethod
    def _info(
        batch_id: str, plain: dict[str, Any] | None, shards: Iterable[Mapping[str, Any]] = ()
    ) -> BatchInfo:
        """The batch from its meta item, with the counters of ``shards`` added to its own
        (a meta item may hold counts too: a batch's writes before its registration)."""
        if not plain:
            return BatchInfo(batch_id=batch_id)
        fields = {k: v for k, v in plain.items() if k in BatchInfo.model_fields}
        for shard in shards:
            for name in COUNTERS:
                if name in shard:
                    fields[name] = fields.get(name, 0) + shard[name]
        return BatchInfo(batch_id=batch_id, **fields)

    # --- registry ----------------------------------------------------------------

    def id_salt(self) -> str:
        """The deployment's secret salt for default batch ids, made once (the first
        caller's conditional write wins; every caller then reads the same one)."""
        reply = self._ddb.get_item(TableName=self._table, Key=SALT_KEY, ConsistentRead=True)
        if "Item" not in reply:
            try:
                self._ddb.put_item(
                    TableName=self._table,
                    Item={**SALT_KEY, "salt": s(secrets.token_hex(32))},
                    ConditionExpression=f"attribute_not_exists({TABLE_PK})",
                )
            except ClientError as err:
                if error_code(err) != "ConditionalCheckFailedException":
                    raise
            reply = self._ddb.get_item(TableName=self._table, Key=SALT_KEY, ConsistentRead=True)
        return str(reply["Item"]["salt"]["S"])

    def register(
        self,
        batch_id: str,
        *,
        total: int,
        priority: str,
        checksum: str,
        registrant: str,
        budget_nanos: int | None = None,
        form: str = "openai",
    ) -> None:
        """Create or update the batch's description; counters are never touched.
        ``form``: its lines' form (``openai`` or ``anthropic``), the shape of its results.
        ``registrant``: the caller's principal id (``core.principals.principal_id``), the
        only sender (with the workers) whose messages the batch accepts. A batch first
        registered here gets this object's ``counter_shards`` (kept when registered again;
        one is not written: the unsharded layout). A batch registered unsharded before, then
        again with shards, counts on: its meta item's counts stay in every reader's sum.

        Raises ``SubmittedFromAnotherFile`` if the batch was registered with another
        ``checksum``, ``RegisteredByAnotherProducer`` if by another principal (checked in
        the same write, so two submits racing cannot both pass).
        """
        names = {"#t": "total", "#p": "priority", "#c": "checksum", "#cr": "created"}
        names["#r"] = "registrant"
        values: dict[str, Any] = {
            ":t": n(total),
            ":p": s(priority),
            ":c": s(checksum),
            ":cr": n(round(time.time(), 3)),
            ":r": s(registrant),
        }
        expression = "SET #t = :t, #p = :p, #c = :c, #cr = if_not_exists(#cr, :cr), #r = :r"
        if form != "openai":  # a batch without one is an OpenAI-form batch
            names["#f"] = "form"
            values[":f"] = s(form)
            expression += ", #f = :f"
        if self._counter_shards > 1:
            names["#cs"] = "counter_shards"
            values[":cs"] = n(self._counter_shards)
            expression += ", #cs = if_not_exists(#cs, :cs)"
        if budget_nanos is not None:
            names["#b"] = "budget_nanos"
            values[":b"] = n(budget_nanos)
            expression += ", #b = :b"
        try:
            self._ddb.update_item(
                TableName=self._table,
                Key=batch_key(batch_id),
                UpdateExpression=expression,
                ConditionExpression="(attribute_not_exists(#c) OR #c = :c) AND "
                "(attribute_not_exists(#r) OR #r = :r)",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as err:
            if error_code(err) != "ConditionalCheckFailedException":
                raise
            held = cast("dict[str, Any]", err.response).get("Item") or {}
            holder = held.get("registrant", {}).get("S")
            if holder and holder != registrant:
                raise RegisteredByAnotherProducer(batch_id, holder) from None
            registered = held.get("checksum", {}).get("S") or "?"
            raise SubmittedFromAnotherFile(batch_id, registered, checksum) from None

    def cancel(self, batch_id: str) -> None:
        self._ddb.update_item(
            TableName=self._table,
            Key=batch_key(batch_id),
            UpdateExpression="SET #c = :t",
            ExpressionAttributeNames={"#c": "cancelled"},
            ExpressionAttributeValues={":t": {"BOOL": True}},
        )

    # --- job transitions ---------------------------------------------------------

    def count_items(
        self, batch_id: str, counters: Mapping[str, int], shard: int | None = None
    ) -> list[dict[str, Any]]:
        """The TransactWriteItem that adds ``counters`` to the batch's (none if all are 0),
        for a caller to commit with its own items: on the meta item, or on the counter
        ``shard`` (``pick_shard`` of the batch's ``counter_shards``), with ``writes``."""
        changed = {name: delta for name, delta in counters.items() if delta}
        if not changed:
            return []
        key = batch_key(batch_id)
        if shard is not None:
            key, changed = counter_key(batch_id, shard), changed | {WRITES: 1}
        return [{"Update": {"TableName": self._table, "Key": key, **adds(changed)}}]

    def transition(
        self,
        batch_id: str,
        custom_id: str,
        *,
        prev: JobState,
        new: JobState,
        counters: Mapping[str, int] | None = None,
        extra: Iterable[dict[str, Any]] = (),
        fields: Mapping[str, Any] | None = None,
        pins: Mapping[str, Any | None] | None = None,
        shard: int | None = None,
    ) -> bool:
        """Move a job from ``prev`` to ``new`` and its counters, exactly once.

        ``extra`` are further TransactWriteItems (the budget's settle) that must happen
        with it or not at all. ``fields`` are attribute values to set on the job's item;
        ``pins`` further conditions on it (an attribute equal to a value, or absent for
        None). ``shard``: the counter item to add to (``count_items``). Returns False when
        the job was no longer in ``prev`` (another delivery got there first) or a pin did
        not hold: nothing was written.
        """
        if prev is new and not fields:
            return True
        state_item, deltas = self.move(batch_id, custom_id, prev, new, counters, fields, pins)
        items: list[Any] = [state_item, *extra, *self.count_items(batch_id, deltas, shard)]
        reasons = transact(self._ddb, items)
        if not reasons:
            return True
        if reasons[0].get("Code") == "ConditionalCheckFailed":
            return False  # the job is no longer in ``prev``: another delivery moved it
        failed = [i for i, r in enumerate(reasons) if r.get("Code") not in (None, "None")]
        raise TransactionRefused(f"job {batch_id}/{custom_id}: items {failed} refused: {reasons}")

    def commit(self, items: Sequence[Mapping[str, Any]]) -> bool:
        """Commit a transaction made of several jobs' ``move`` parts and their batches'
        ``count_items`` (and whatever else must go with them); False when a condition
        failed: nothing was written."""
        return not transact(self._ddb, items)

    def move(
        self,
        batch_id: str,
        custom_id: str,
        prev: JobState,
        new: JobState,
        counters: Mapping[str, int] | None = None,
        fields: Mapping[str, Any] | None = None,
        pins: Mapping[str, Any | None] | None = None,
    ) -> tuple[dict[str, Any], dict[str, int]]:
        """The parts of a ``transition``, for a caller that commits several together: the
        job item's conditional update, and what the move adds to its batch's counters."""
        deltas = dict(counters or {})
        if new.gauge or new.terminal:
            deltas[new.counter] = deltas.get(new.counter, 0) + 1
        if prev.gauge or prev.terminal:  # leaving a terminal state: only ``retry`` does
            deltas[prev.counter] = deltas.get(prev.counter, 0) - 1
        state_item = {
            "Update": {
                "TableName": self._table,
                "Key": job_key(batch_id, custom_id),
                **_state_update(prev, new, fields or {}, pins or {}),
            }
        }
        return state_item, deltas

    def retry(self, batch_id: str, job: JobRecord, shard: int | None = None) -> bool:
        """Move a job to ``retrying`` before ``chatbatch retry`` sends it again, exactly once:
        on the condition that it is still in the state and at the retry count read, so of
        two retries racing one sends it, and a stale one never sends a job that ran again.
        Its count (``failed``, or the ``dead_lettered`` gauge) goes down; the job counts
        again when it ends. False when it had moved (nothing written)."""
        return self.transition(
            batch_id,
            job.custom_id,
            prev=job.state,
            new=JobState.retrying,
            counters={"retried": 1},
            fields={"retries": n(job.retries + 1)},
            pins={"retries": n(job.retries) if job.retries else None},
            shard=shard,
        )


def _record(custom_id: str, item: Mapping[str, Any]) -> JobRecord:
    """A job's record from its plain item (``new`` when it has none)."""
    fields = {k: v for k, v in item.items() if k in JobRecord.model_fields}
    return JobRecord(**(fields | {"custom_id": custom_id}))


def _shards(meta: Mapping[str, Any] | None) -> int:
    """The counter shards a batch was registered with (1: its meta item holds them)."""
    return int((meta or {}).get("counter_shards", 1))


def _state_update(
    prev: JobState, new: JobState, fields: Mapping[str, Any], pins: Mapping[str, Any | None]
) -> dict[str, Any]:
    """The job item's update: state ``prev -> new`` (conditional), its TTL, ``fields``, and
    the ``pins`` as further conditions."""
    names = {"#s": "state", "#x": TABLE_TTL}
    values: dict[str, Any] = {":new": s(new.value), ":x": n(int(time.time()) + JOB_TTL_S)}
    sets = ["#s = :new", "#x = :x"]
    if prev is JobState.new:
        conditions = ["attribute_not_exists(#s)"]
    else:
        conditions = ["#s = :prev"]
        values[":prev"] = s(prev.value)
    placeholders = {attr: f"#f{i}" for i, attr in enumerate(dict.fromkeys([*fields, *pins]))}
    names |= {placeholder: attr for attr, placeholder in placeholders.items()}
    for i, (attr, value) in enumerate(fields.items()):
        values[f":f{i}"] = value
        sets.append(f"{placeholders[attr]} = :f{i}")
    for i, (attr, value) in enumerate(pins.items()):
        if value is None:
            conditions.append(f"attribute_not_exists({placeholders[attr]})")
        else:
            values[f":p{i}"] = value
            conditions.append(f"{placeholders[attr]} = :p{i}")
    return {
        "UpdateExpression": "SET " + ", ".join(sets),
        "ConditionExpression": " AND ".join(conditions),
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": values,
    }
