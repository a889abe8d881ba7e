"""The day's pause: the whole pipeline stopped because the day's budget is spent.

One item on the shared table, ``pk=pause#budget, sk=pause``, present only while paused
(the pattern of the model breaker, ``state/breaker.py``): ``reason`` (``daily_budget``),
``message`` (which limit, which day), ``since`` (when it opened, kept when another worker
opens it again), ``until`` (the next UTC midnight, when the day's ledger resets) and
``limit_nanos`` (the daily limit it was reached at: a higher one means it was raised).

- ``open`` creates or refreshes the item; the first opener sets ``since``.
- ``get`` is cached per worker for ``cache_s`` seconds (``fresh`` reads through).
- ``close`` deletes it; ``lift`` turns the queues back on, then closes it (in that order:
  a switch that fails leaves the pause open, for the next lift to retry): the day reset
  (the schedule, ``worker/budget_pause.py`` ``resume_if_due``) or the budget was raised
  (``chatbatch budget set``).
- ``due`` tells whether a pause has run its course at ``now``.

While the item exists the queues' event source mappings are off (``state/queue_switch.py``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from chatbatch.core.resources import TABLE_PK, TABLE_SK
from chatbatch.state.cached_items import CachedItems
from chatbatch.state.ddb import n, plain, s
from chatbatch.state.queue_switch import QueueSwitch

PAUSE_KEY = {TABLE_PK: s("pause#budget"), TABLE_SK: s("pause")}
REASON = "daily_budget"


class DayPause(BaseModel):
    """The pipeline is paused: why, since and until when (epoch seconds)."""

    reason: str
    message: str
    since: float
    until: float
    limit_nanos: int

    def due(self, now: float) -> bool:
        return now >= self.until


class BudgetPause(CachedItems):
    """The pipeline's budget pause on the shared table, with a short per-worker cache."""

    _cache: tuple[float, DayPause | None] | None = None  # (valid until, what was read)

    def get(self, *, fresh: bool = False) -> DayPause | None:
        """The open pause, or None (read at most once per ``cache_s``)."""
        now = self._clock()
        if not fresh and self._cache is not None and self._cache[0] > now:
            return self._cache[1]
        item = self._ddb.get_item(TableName=self._table, Key=PAUSE_KEY, ConsistentRead=True)
        fields = item.get("Item")
        pause = DayPause.model_validate(plain(fields)) if fields else None
        self._cache = (now + self._cache_s, pause)
        return pause

    def open(self, message: str, *, until: float, limit_nanos: int) -> DayPause:
        """Pause until ``until``: the first opener sets ``since``."""
        now = self._clock()
        names = {f"#{k}": k for k in ("reason", "message", "since", "until", "limit_nanos")}
        values: dict[str, Any] = {
            ":reason": s(REASON),
            ":message": s(message),
            ":now": n(now),
            ":until": n(until),
            ":limit": n(limit_nanos),
        }
        reply = self._ddb.update_item(
            TableName=self._table,
            Key=PAUSE_KEY,
            UpdateExpression="SET #reason = :reason, #message = :message, "
            "#since = if_not_exists(#since, :now), #until = :until, #limit_nanos = :limit",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
            ReturnValues="ALL_NEW",
        )
        pause = DayPause.model_validate(plain(reply["Attributes"]))
        self._cache = (now + self._cache_s, pause)
        return pause

    def close(self) -> DayPause | None:
        """Lift the pause; the pause that was lifted, or None if there was none."""
        reply = self._ddb.delete_item(TableName=self._table, Key=PAUSE_KEY, ReturnValues="ALL_OLD")
        self._cache = (self._clock() + self._cache_s, None)
        old = reply.get("Attributes")
        return DayPause.model_validate(plain(old)) if old else None

    def lift(self, switch: QueueSwitch) -> DayPause | None:
        """Turn every queue's consumer back on, then close the pause (the switch is turned
        on also when no pause was open: one left off by a worker that died between its
        two writes is healed). A switch that fails raises, and leaves the pause open."""
        switch.set_enabled(True)
        return self.close()
