"""``CachedItems``: a kind of item on the shared table that every worker reads through a
short per-worker cache (the model breakers, ``state/breaker.py``; the budget pause,
``state/budget/pause.py``): the client, the table, the clock and the cache's lifetime."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


class CachedItems:
    """The shared table, a clock, and how long (``cache_s``, default ``CACHE_S``) a
    worker may trust a read."""

    CACHE_S = 5.0

    def __init__(
        self,
        ddb: DynamoDBClient,
        table: str,
        *,
        clock: Callable[[], float] = time.time,
        cache_s: float | None = None,
    ) -> None:
        self._ddb = ddb
        self._table = table
        self._clock = clock
        self._cache_s = self.CACHE_S if cache_s is None else cache_s

    def now(self) -> float:
        """The clock's time (epoch seconds): tests move it."""
        return self._clock()
