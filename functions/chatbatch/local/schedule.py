"""The stack's EventBridge schedules, locally, on the local runtime's clock: the resume
schedule (every hour at :00 UTC, sending the worker function ``RESUME_EVENT``) and the
gatherer's (every few minutes, ``GATHER_EVENT``; here every ``gather_every_s``).

A thread looks at the clock every ``TICK_S`` and invokes the real handler with the
schedule's event each time the clock enters a new period, as the rule would, and once when
the runtime starts (a resumed run's state may hold a pause that is over by now). Every
invocation runs on the schedule's own thread, so the instance it makes (one per thread,
``worker/handler.py``, ``batchroute/handler.py``) is this runtime's, with this runtime's
config, and ends with it. A test that moves the clock past midnight sees the pipeline
resume by itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger

from chatbatch.core.resources import RESUME_EVENT
from chatbatch.local.emulator import Handler, LambdaContext
from chatbatch.worker.crash import WorkerCrash

TICK_S = 0.1
logger = Logger(service="chatbatch-local")


class Schedule:
    """Invokes ``handler`` with ``event`` whenever ``clock`` enters a new period of
    ``period_s`` (an hour: the resume schedule)."""

    def __init__(
        self,
        handler: Handler,
        clock: Callable[[], float],
        *,
        function_name: str,
        timeout_s: float,
        event: dict[str, Any] = RESUME_EVENT,
        period_s: float = 3600.0,
    ) -> None:
        self._handler = handler
        self._event = event
        self._period_s = period_s
        self._clock = clock
        self._function_name = function_name
        self._timeout_s = timeout_s
        self._stop = threading.Event()
        self._first = threading.Event()  # the start-up invocation has returned
        name = f"schedule-{next(iter(event.values()))}"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.fired: list[Any] = []  # what each invocation returned

    def start(self) -> None:
        """Fire once now (a pause a resumed run's state brought back may be over, or its
        limit raised by ``--budget-usd``), then every period of the clock; returns once
        the first invocation has (on the schedule's thread)."""
        self._thread.start()
        self._first.wait(self._timeout_s)

    def fire(self) -> None:
        context = LambdaContext(self._function_name, self._timeout_s)
        try:
            self.fired.append(self._handler(dict(self._event), context))
        except (Exception, WorkerCrash) as err:  # a failed (or dead) scheduled invocation:
            # the next period runs it again, as EventBridge invokes a new instance
            logger.warning(f"the {self._event} schedule's invocation failed: {err!r}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._timeout_s)

    def _run(self) -> None:
        period = int(self._clock() // self._period_s)
        try:
            self.fire()
        finally:
            self._first.set()
        while not self._stop.wait(TICK_S):
            now_period = int(self._clock() // self._period_s)
            if now_period == period:
                continue
            period = now_period
            self.fire()
