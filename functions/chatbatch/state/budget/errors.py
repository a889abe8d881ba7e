"""What a reservation can be refused with: no room now (``BudgetDeferred``), never
(``OverRequestCap``), paid already (``AlreadySettled``) or held by another copy of the job
(``HeldElsewhere``). The package docstring tells when each is raised (**Deferral, not
failure**, **Exactly once**).
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from chatbatch.core.pricing import from_nanos


class BudgetDeferred(Exception):
    """No budget now; ask again after ``retry_after_s`` seconds.

    ``scope`` is ``"day"`` or ``"batch"``; ``until`` the next UTC midnight when the day's
    spending itself is at the limit (None when the room may come back sooner).
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
