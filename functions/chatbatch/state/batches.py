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
  and the completion event's marks (``state.completion``).
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
        waiting = (JobState.deferred, JobState.throttled, JobState.paused, JobState.dead_lettered)
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
    succeeded: int = 0
    failed: int = 0
    deferred: int = 0
    throttled: int = 0
    paused: int = 0
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
    def finished(self) -> int:
        """Jobs in a terminal state (dead-lettered counts until it is redriven)."""
        return self.succeeded + self.failed + self.cancelled_jobs + self.dead_lettered

    @property
    def complete(self) -> bool:
        """Every job of the registered ``total`` is final (never, without a total)."""
        return self.total is not None and self.finished >= self.total


def batch_key(batch_id: str) -> dict[str, Any]:
    return {TABLE_PK: s(f"batch#{batch_id}"), TABLE_SK: s("meta")}


def job_pk(batch_id: str, custom_id: str) -> str:
    """A job's partition key: by its ``id_key``, so any custom_id fits (and is short)."""
    return f"job#{batch_id}#{id_key(custom_id)}"


def job_key(batch_id: str, custom_id: str) -> dict[str, Any]:
    return {TABLE_PK: s(job_pk(batch_id, custom_id)), TABLE_SK: s("state")}


class Batches:
    """Batch registry, counters and job states on the shared table."""

    def __init__(self, ddb: DynamoDBClient, table: str) -> None:
        self._ddb = ddb
        self._table = table

    # --- reads -------------------------------------------------------------------

    def prefetch(
        self, jobs: Iterable[tuple[str, str]]
    ) -> tuple[dict[tuple[str, str], JobState], dict[str, BatchInfo]]:
        """The states of many jobs and their batches in as few reads as possible."""
        jobs = list(dict.fromkeys(jobs))
        batch_ids = list(dict.fromkeys(b for b, _ in jobs))
        found = self._get_many([job_key(b, c) for b, c in jobs] + [batch_key(b) for b in batch_ids])
        states = {
            (b, c): JobState(found.get(job_pk(b, c), {}).get("state", JobState.new))
            for b, c in jobs
        }
        batches = {b: self._info(b, found.get(f"batch#{b}")) for b in batch_ids}
        return states, batches

    def jobs(self, batch_id: str, custom_ids: Iterable[str]) -> list[JobRecord]:
        """The items of a batch's jobs (a job without one is ``new``), in the order given."""
        ids = list(dict.fromkeys(custom_ids))
        found = self._get_many([job_key(batch_id, c) for c in ids])
        records = []
        for custom_id in ids:
            item = found.get(job_pk(batch_id, custom_id), {})
            fields = {k: v for k, v in item.items() if k in JobRecord.model_fields}
            records.append(JobRecord(**(fields | {"custom_id": custom_id})))
        return records

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
        reply = self._ddb.get_item(
            TableName=self._table, Key=batch_key(batch_id), ConsistentRead=True
        )
        item = reply.get("Item")
        return self._info(batch_id, plain(item)) if item else None

    def list_all(self) -> list[BatchInfo]:
        """Every batch of the deployment, oldest first.

        No index names the batch items, so they are found by a Scan, page by page, each
        item returning only the batch's fields. It reads the whole table (billed by the size
        read, job states included): for a person's command (``chatbatch batches``), never
        the worker's path. See docs/everyday-commands.md for the index it could use."""
        fields = [name for name in BatchInfo.model_fields if name != "batch_id"]
        out = [
            self._info(item[TABLE_PK].removeprefix("batch#"), item)
            for item in scan_items(self._ddb, self._table, "batch#", "meta", attributes=fields)
        ]
        return sorted(out, key=lambda b: b.created or 0)

    @staticmethod
    def _info(batch_id: str, plain: dict[str, Any] | None) -> BatchInfo:
        if not plain:
            return BatchInfo(batch_id=batch_id)
        fields = {k: v for k, v in plain.items() if k in BatchInfo.model_fields}
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
        only sender (with the workers) whose messages the batch accepts.

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

    def count_items(self, batch_id: str, counters: Mapping[str, int]) -> list[dict[str, Any]]:
        """The TransactWriteItem that adds ``counters`` to the batch's (none if all are 0),
        for a caller to commit with its own items."""
        changed = {name: delta for name, delta in counters.items() if delta}
        if not changed:
            return []
        return [{"Update": {"TableName": self._table, "Key": batch_key(batch_id), **adds(changed)}}]

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
    ) -> bool:
        """Move a job from ``prev`` to ``new`` and its counters, exactly once.

        ``extra`` are further TransactWriteItems (the budget's settle) that must happen
        with it or not at all. ``fields`` are attribute values to set on the job's item;
        ``pins`` further conditions on it (an attribute equal to a value, or absent for
        None). Returns False when the job was no longer in ``prev`` (another delivery got
        there first) or a pin did not hold: nothing was written.
        """
        if prev is new and not fields:
            return True
        state_item, deltas = self.move(batch_id, custom_id, prev, new, counters, fields, pins)
        items: list[Any] = [state_item, *extra, *self.count_items(batch_id, deltas)]
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

    def retry(self, batch_id: str, job: JobRecord) -> bool:
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
        )


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
