"""Fault injection: the points where tests and benchmarks crash a worker mid-job.

``crash_hook`` is ``None`` in production. A test sets it to a function of the point's name
and the job; when that returns true the instance "dies" there (``WorkerCrash``, a
``BaseException`` that nothing in the pipeline catches), leaving its state exactly as a
real crash between those two steps would.
"""

from __future__ import annotations

from collections.abc import Callable

from chatbatch.worker.intake import Intake


class WorkerCrash(BaseException):
    """A simulated crash: the instance dies mid-batch (fault injection in tests/benchmarks)."""


CrashHook = Callable[[str, Intake], bool]
CRASH_POINTS = ("after_reserve", "after_call", "after_s3_write", "before_delete")
crash_hook: CrashHook | None = None  # set by fault tests; None in production


def crash_point(name: str, intake: Intake) -> None:
    if crash_hook is not None and crash_hook(name, intake):
        raise WorkerCrash(f"simulated crash {name} ({intake.batch_id}/{intake.custom_id})")
