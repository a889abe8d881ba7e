"""When the jobs handed back for a short while come back: a local run's wait for them.

A job handed back (``worker/requeue.hand_back``) is sent to its queue again with a delay
(SQS ``DelaySeconds``): a job deferred because reservations in flight hold the day's room
comes back in ``BUSY_RETRY_S`` and may find room then; one deferred because a batch
reached its limit comes back in five minutes, one above the whole daily limit after
midnight. A local run whose jobs are all final or deferred, with nothing running, ends
once the short ones came back (``LocalRuntime.wait``), not after a fixed wait: the
messages' delays are read as they are sent, through botocore's hooks on the run's session.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from chatbatch.local import sessions
from chatbatch.state.budget import errors as budget_errors


class Returns:
    """The latest time a message sent with a short delay (``BUSY_RETRY_S`` or less: it
    may find room when it comes back) becomes visible, on ``clock``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last = clock()
        self._lock = threading.Lock()

    def __call__(self, params: dict[str, Any], **_: Any) -> None:
        """A ``SendMessage``'s parameters, or a ``SendMessageBatch``'s (the journal's
        replay of a resumed run sends delayed messages so)."""
        delays = [float(e.get("DelaySeconds", 0)) for e in params.get("Entries", [params])]
        short = [d for d in delays if 0 < d <= budget_errors.BUSY_RETRY_S]
        if short:
            with self._lock:
                self._last = max(self._last, self._clock() + max(short))

    def install(self) -> None:
        """Watch every message the run's session sends (``local/sessions``)."""
        for operation in ("SendMessage", "SendMessageBatch"):
            sessions.register(f"provide-client-params.sqs.{operation}", self)

    def due_in(self) -> float:
        """Seconds until the last short-delayed message is back (<= 0: all are)."""
        with self._lock:
            return self._last - self._clock()
