"""SQS record -> the job it carries, or a clear reason why it carries none.

Any producer may drop a job line straight onto a priority queue; ``chatbatch submit``
sends the same JSON (``Job.to_line``). A job too large for an SQS message arrives as a
claim check and is read from S3 here. A job that names no batch joins the default batch
of its UTC day, ``daily-YYYY-MM-DD``.
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
    BATCH_ID_PATTERN,
    CLAIM_CHECK_KEY,
    ID_PATTERN,
    ClaimCheck,
    Job,
    JobError,
)
from chatbatch.core.resources import Resources
from chatbatch.state.store import Store

ATTR_HANDBACKS = "chatbatch-handbacks"
ATTR_BATCH = "chatbatch-batch"
ATTR_OWNER = "chatbatch-owner"  # the message id of the job's copy that holds its reservation


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


def _decode(record: SQSRecord, store: Store) -> tuple[Any, int]:
    """The job's JSON value (read from S3 when the body is a claim check) and its size."""
    text = record.body
    data = load_json(text, "(body)")
    if isinstance(data, dict) and CLAIM_CHECK_KEY in data:
        claim = ClaimCheck.model_validate(data[CLAIM_CHECK_KEY])
        claimed = store.get_text(claim.key)
        if claimed is None:
            raise JobError(CLAIM_CHECK_KEY, f"s3://{claim.bucket}/{claim.key} not found")
        text, data = claimed, load_json(claimed, "(body)")
    return data, len(text.encode())


def read_record(record: SQSRecord, config: Config, resources: Resources, store: Store) -> Intake:
    priority = resources.priority_of_queue(record.event_source_arn) or config.defaults.priority
    data: Any = None
    try:
        data, size = _decode(record, store)
        if size > config.limits.max_line_bytes:
            raise JobError(
                "(body)",
                f"job is {size} bytes; the limit is {config.limits.max_line_bytes} "
                "(limits.max_line_bytes)",
            )
        job = parse_job(data, config)
        batch_id = _batch_of(record, job.batch_id)
        return Intake(record, batch_id, job.custom_id, priority, job=job)
    except UnicodeDecodeError as err:
        error = JobError("(body)", f"not valid UTF-8: {err}")
    except ValidationError as err:
        error = JobError(CLAIM_CHECK_KEY, f"not a valid claim check: {err.errors()[0]['msg']}")
    except JobError as err:
        error = err
    except ClientError as err:  # S3 unreachable for a claim check: only this job waits
        raw = data if isinstance(data, dict) else {}
        custom_id = _safe(raw.get("custom_id"), ID_PATTERN) or f"msg-{record.message_id}"
        return Intake(record, _batch_of(record, None), custom_id, priority, transient=str(err))
    raw = data if isinstance(data, dict) else {}
    custom_id = _safe(raw.get("custom_id"), ID_PATTERN) or f"msg-{record.message_id}"
    batch_id = _batch_of(record, _safe(raw.get("batch_id"), BATCH_ID_PATTERN))
    error.custom_id = custom_id
    return Intake(record, batch_id, custom_id, priority, error=error)
