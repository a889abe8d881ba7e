"""Fault injection in the gatherer: the points between two of its writes where tests
crash a run (docs/batch-route.md: "every step below is still written to survive a crash
between any two of its writes, because a run can time out").

``crash_hook`` is ``None`` in production. A test sets it to a function of the point's
name; when that returns true the run "dies" there, raising the worker's ``WorkerCrash``
(a ``BaseException`` that no step's ``except Exception`` catches, so nothing after the
point is written, exactly as when a Lambda times out there). The local schedule treats it
as a failed invocation: the next period runs the gatherer again.
"""

from __future__ import annotations

from collections.abc import Callable

from chatbatch.worker.crash import WorkerCrash

# in the order a part meets them (recover's between gather's create and its record)
GATHER_POINTS = (
    "gather_after_file",  # the part's input file written; no record
    "gather_after_record",  # the record creating, its jobs batched; no money
    "gather_after_reserve",  # its reservations made; the messages not deleted
    "gather_after_delete",  # the messages deleted; no provider batch
    "after_provider_create",  # the provider batch created; its id not recorded
)
RECOVER_POINTS = (
    "recover_after_find",  # a creating part's provider batch looked for
    "give_up_after_sends",  # a part no batch was made for: its jobs sent synchronously
    "give_up_after_close",  # and its money closed; its jobs still in it
)
INGEST_POINTS = (
    "ingest_after_ingesting",  # the record ingesting; nothing read
    "ingest_after_objects",  # a chunk's results and costs objects written
    "ingest_after_errors",  # a chunk's error records written
    "ingest_after_sends",  # a chunk's re-sends to the synchronous path sent
    "ingest_after_transaction",  # a chunk committed; the next not begun
    "ingest_before_close",  # every chunk committed; the part's money not closed
    "ingest_after_close",  # the money closed; the record not done
)
CRASH_POINTS = GATHER_POINTS + RECOVER_POINTS + INGEST_POINTS

CrashHook = Callable[[str], bool]
crash_hook: CrashHook | None = None  # set by fault tests; None in production


def crash_point(name: str) -> None:
    if crash_hook is not None and crash_hook(name):
        raise WorkerCrash(f"simulated gatherer crash {name}")
