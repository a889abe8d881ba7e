"""SQS record -> the job it carries, or a clear reason why it carries none.

Any producer may drop a job line straight onto a priority queue; ``chatbatch submit``
sends the same JSON (``Job.to_line``). A job too large for an SQS message arrives as a
claim check and is read from S3 here; the claim's ``custom_id`` and ``batch_id`` are the
job's (the stored line may leave them out, and is refused if it names another job). A
job that names no batch joins the default batch of its UTC day, ``daily-YYYY-MM-DD``.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from botocore.exceptions import ClientError
from pydantic import ValidationError

from chatbatch.core.config import Config, Priority
from chatbatch.core.days import utc_day
from chatbatch.core.job_lines import load_json, parse_job
from chatbatch.core.jobs import (
    ATTR_BATCH,
    BATCH_ID_PATTERN,
    CLAIM_CHECK_KEY,
    ClaimCheck,
    Job,
    JobError,
    is_custom_id,
)
from chatbatch.core.resources import Resources
from chatbatch.state.store import ObjectTooLarge, Store
from chatbatch.translate import check_job

ATTR_HANDBACKS = "chatbatch-handbacks"
ATTR_OWNER = "chatbatch-owner"  # the message id of the job's copy that holds its reservation
# when the job's first message was sent (epoch ms): its age travels with its hand-backs
ATTR_FIRST_SENT = "chatbatch-first-sent"


def default_batch(now: dt.datetime | None = None) -> str:
    return f"daily-{utc_day(now.timestamp() if now else None)}"


@dataclass(frozen=True)
class Intake:
    """One record, decoded: ``job`` or ``error`` is set; the ids are always usable keys."""

    record: SQSRecord
    batch_id: str
    custom_id: str
    priority: Priority
    job: Job | None = None
    error: JobError | None = None
    transient: str | None = None  # could not be read now (S3 unreachable): retry it
    refused: str | None = None  # its sender may not write its batch (``worker.producers``)

    @property
    def sender_id(self) -> str | None:
        """Who sent this message, as SQS reports it (``AIDA…``, ``AROA…:SESSION``)."""
        sender = self.record.attributes.get("SenderId")
        return str(sender) if sender else None

    @property
    def key(self) -> tuple[str, str]:
        return self.batch_id, self.custom_id

    @property
    def receive_count(self) -> int:
        return int(self.record.attributes.approximate_receive_count or 1)

    @property
    def owner(self) -> str:
        """Which copy of the job this is: its message id, kept across hand-backs (a
        re-sent copy is the same copy); a redelivery of one message is the same copy."""
        attr = self.record.message_attributes[ATTR_OWNER]  # None when absent
        return attr.string_value if attr and attr.string_value else self.record.message_id

    @property
    def handbacks(self) -> int:
        attr = self.record.message_attributes[ATTR_HANDBACKS]  # None when absent
        return int(attr.string_value or 0) if attr else 0

    @property
    def first_sent_ms(self) -> int | None:
        """When the job's first message was sent (epoch ms): carried by its hand-backs,
        else this message's own ``SentTimestamp``."""
        attr = self.record.message_attributes[ATTR_FIRST_SENT]  # None when absent
        if attr and attr.string_value and attr.string_value.isdigit():
            return int(attr.string_value)
        sent = self.record.attributes.sent_timestamp
        return int(sent) if sent else None


def _safe(value: Any, pattern: str) -> str | None:
    return value if isinstance(value, str) and re.fullmatch(pattern, value) else None


def _batch_of(record: SQSRecord, named: str | None) -> str:
    """The job's batch: its own, else the one a hand-back carried, else the default batch
    of the day the message was first sent (a redelivery after midnight keeps it)."""
    if named:
        return named
    carried = record.message_attributes[ATTR_BATCH]  # None when absent
    if carried and carried.string_value and re.fullmatch(BATCH_ID_PATTERN, carried.string_value):
        return carried.string_value
    sent_ms = record.attributes.sent_timestamp
    sent = dt.datetime.fromtimestamp(int(sent_ms) / 1000, dt.UTC) if sent_ms else None
    return default_batch(sent)


def _claimed(claim: ClaimCheck, record: SQSRecord, store: Store, max_bytes: int) -> Any:
    """The job line a claim check points at, with the claim's ids. Only the job's own
    claim object is read (``ClaimCheck.of_batch``), and at most ``max_bytes`` of it."""
    where = f"s3://{claim.bucket}/{claim.key}"
    if claim.bucket != store.bucket:
        raise JobError(
            f"{CLAIM_CHECK_KEY}.bucket",
            f"{where}: the workers read claim checks from their data bucket "
            f"{store.bucket!r} only; store the job there",
        )
    claim = claim.of_batch(_batch_of(record, claim.batch_id))
    try:
        text = store.get_text_capped(claim.key, max_bytes)
    except ObjectTooLarge as err:
        raise JobError(
            "(body)",
            f"{where} is {err.size} bytes; the limit is {max_bytes} (limits.max_line_bytes)",
        ) from None
    if text is None:
        raise JobError(CLAIM_CHECK_KEY, f"{where} not found")
    return claim.fill(load_json(text, where))


def _ids(record: SQSRecord, *sources: Any) -> tuple[str, str]:
    """The (batch, custom_id) of a job that cannot run: from the first source that names
    them well (the claim check, then the job line), else the message's own."""
    named = [v for v in sources if isinstance(v, dict)]
    custom_id = (
        next((c for v in named if is_custom_id(c := v.get("custom_id"))), None)
        or f"msg-{record.message_id}"
    )
    batch = next((b for v in named if (b := _safe(v.get("batch_id"), BATCH_ID_PATTERN))), None)
    return _batch_of(record, batch), custom_id


def read_record(record: SQSRecord, config: Config, resources: Resources, store: Store) -> Intake:
    """Decode one record. A claim check's ``custom_id`` and ``batch_id`` are the job's: the
    stored line may leave them out; one that names another job is refused."""
    priority = resources.priority_of_queue(record.event_source_arn) or config.defaults.priority
    data: Any = None
    claim: Any = None
    try:
        data = load_json(record.body, "(body)")
        size = len(record.body.encode())
        if size > config.limits.max_line_bytes:
            raise JobError(
                "(body)",
                f"job is {size} bytes; the limit is {config.limits.max_line_bytes} "
                "(limits.max_line_bytes)",
            )
        if isinstance(data, dict) and CLAIM_CHECK_KEY in data:
            claim = data[CLAIM_CHECK_KEY]
            checked = ClaimCheck.model_validate(claim)
            data = _claimed(checked, record, store, config.limits.max_line_bytes)
        job = parse_job(data, config)
        check_job(job, config)
        batch_id = _batch_of(record, job.batch_id)
        return Intake(record, batch_id, job.custom_id, priority, job=job)
    except UnicodeDecodeError as err:
        error = JobError("(body)", f"not valid UTF-8: {err}")
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join([CLAIM_CHECK_KEY, *(str(part) for part in first["loc"])])
        error = JobError(field, f"not a valid claim check: {first['msg']}")
    except JobError as err:
        error = err
    except ClientError as err:  # S3 unreachable for a claim check: only this job waits
        batch_id, custom_id = _ids(record, claim, data)
        return Intake(record, batch_id, custom_id, priority, transient=str(err))
    batch_id, custom_id = _ids(record, claim, data)
    error.custom_id = custom_id
    return Intake(record, batch_id, custom_id, priority, error=error)
