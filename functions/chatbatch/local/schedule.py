"""The resume schedule, locally: the stack's EventBridge rule (every hour at :00 UTC,
sending the worker function ``RESUME_EVENT``) run on the local runtime's clock.

A thread looks at the clock every ``TICK_S`` and invokes the real handler with the
schedule's event each time the clock enters a new hour, as the rule would, and once when
the runtime starts (a resumed run's state may hold a pause that is over by now). Every
invocation runs on the schedule's own thread, so the worker instance it makes (one per
thread, ``worker/handler.py``) is this runtime's, with this runtime's config, and ends
with it. A test that
moves the clock past midnight sees the pipeline resume by itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger

from chatbatch.core.resources import RESUME_EVENT
from chatbatch.local.emulator import Handler, LambdaContext

TICK_S = 0.1
logger = Logger(service="chatbatch-local")


class HourlySchedule:
    """Invokes ``handler`` with ``RESUME_EVENT`` whenever ``clock`` enters a new hour."""

    def __init__(
        self, handler: Handler, clock: Callable[[], float], *, function_name: str, timeout_s: float
    ) -> None:
        self._handler = handler
        self._clock = clock
        self._function_name = function_name
        self._timeout_s = timeout_s
        self._stop = threading.Event()
        self._first = threading.Event()  # the start-up invocation has returned
        self._thread = threading.Thread(target=self._run, name="resume-schedule", daemon=True)
        self.fired: list[Any] = []  # what each invocation returned

    def start(self) -> None:
        """Fire once now (a pause a resumed run's state brought back may be over, or its
        limit raised by ``--budget-usd``), then every hour of the clock; returns once the
        first invocation has (on the schedule's thread)."""
        self._thread.start()
        self._first.wait(self._timeout_s)

    def fire(self) -> None:
        context = LambdaContext(self._function_name, self._timeout_s)
        try:
            self.fired.append(self._handler(dict(RESUME_EVENT), context))
        except Exception as err:  # as a failed scheduled invocation: the next hour retries
            logger.warning(f"the resume schedule's invocation failed: {err!r}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._timeout_s)

    def _run(self) -> None:
        hour = int(self._clock() // 3600)
        try:
            self.fire()
        finally:
            self._first.set()
        while not self._stop.wait(TICK_S):
            now_hour = int(self._clock() // 3600)
            if now_hour == hour:
                continue
            hour = now_hour
            self.fire()
