"""What a reservation can be refused with: no room now (``BudgetDeferred``), never
(``OverRequestCap``), paid already (``AlreadySettled``) or held by another copy of the job
(``HeldElsewhere``). The package docstring tells when each is raised (**Deferral, not
failure**, **Exactly once**).
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from chatbatch.core.days import next_midnight, seconds_to_midnight
from chatbatch.core.pricing import from_nanos

BATCH_RETRY_S = 300.0  # a batch at its limit: its budget may be raised
BUSY_RETRY_S = 15.0  # only reservations in flight hold the rest: they settle soon


class BudgetDeferred(Exception):
    """No budget now; ask again after ``retry_after_s`` seconds.

    ``scope`` is ``"day"`` or ``"batch"``; ``until`` the next UTC midnight when the day's
    spending itself is at the limit (None when the room may come back sooner, or when the
    job's worst case alone is above the daily limit: no day has room for it, only a
    higher limit).
    """

    def __init__(
        self,
        message: str,
        retry_after_s: float,
        *,
        scope: Literal["day", "batch"] = "day",
        until: dt.datetime | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.scope = scope
        self.until = until


class OverRequestCap(ValueError):
    """A request whose worst case alone is above the per-request cap."""


class AlreadySettled(Exception):
    """The job was already paid for: do not call the provider for it again."""

    def __init__(self, job_key: str, actual_nanos: int) -> None:
        super().__init__(f"job {job_key} was already settled at ${from_nanos(actual_nanos)}")
        self.job_key = job_key
        self.actual_nanos = actual_nanos


class HeldElsewhere(Exception):
    """Another copy of the job (another SQS message: a resend, a duplicate delivery) holds
    its reservation and may be calling the provider now: look again later, do not pay twice."""

    def __init__(self, job_key: str, retry_after_s: float) -> None:
        super().__init__(f"job {job_key} is being processed by another copy of it")
        self.job_key = job_key
        self.retry_after_s = retry_after_s


def deferral(
    scope: Literal["day", "batch"],
    batch_id: str | None,
    day: str,
    limit_nanos: int,
    *,
    over: bool,
    now: float,
    job_nanos: int = 0,
) -> BudgetDeferred:
    """Why a reservation is refused, and when to ask again: after the next UTC midnight
    when the day's spending itself is at its limit (``over``), in 5 minutes when a batch's
    is, in ``BUSY_RETRY_S`` when only reservations in flight hold the room. A job whose
    worst case alone (``job_nanos``) is above the daily limit waits as before the pause
    existed (after midnight, in steps), alone: with no ``until`` it pauses nothing."""
    limit = from_nanos(limit_nanos)
    if scope == "batch":
        if over:
            return BudgetDeferred(
                f"batch {batch_id} reached its budget ${limit}", BATCH_RETRY_S, scope="batch"
            )
        return BudgetDeferred(
            f"batch {batch_id}: its budget ${limit} is held by reservations in flight",
            BUSY_RETRY_S,
            scope="batch",
        )
    if job_nanos > limit_nanos:
        return BudgetDeferred(
            f"worst case ${from_nanos(job_nanos)} alone is above the daily budget ${limit}: "
            "the job waits for a higher limit (chatbatch budget set --daily USD) or a lower "
            "max_tokens",
            seconds_to_midnight(now),
            scope="day",
        )
    if over:
        return BudgetDeferred(
            f"daily budget ${limit} reached for {day}",
            seconds_to_midnight(now),
            scope="day",
            until=next_midnight(now),
        )
    return BudgetDeferred(
        f"daily budget ${limit} for {day} is held by reservations in flight",
        BUSY_RETRY_S,
        scope="day",
    )
