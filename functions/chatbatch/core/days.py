"""The UTC day: the budget's ledger, a default batch's name and a cost record's partition.

One definition, so that a job's reservation, its cost record and the batch it lands in
always agree on which day it is.
"""

from __future__ import annotations

import datetime as dt
import time


def utc_day(now: float | None = None) -> str:
    """``YYYY-MM-DD`` of ``now`` (epoch seconds; default: the current time) in UTC."""
    return f"{dt.datetime.fromtimestamp(time.time() if now is None else now, dt.UTC):%Y-%m-%d}"


def next_midnight(now: float) -> dt.datetime:
    """The UTC midnight that ends the day of ``now``: when a new day's budget starts."""
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    return dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), dt.UTC)


def seconds_to_midnight(now: float) -> float:
    return next_midnight(now).timestamp() - now
