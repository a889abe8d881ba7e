"""Pausing the whole pipeline when the day's budget is spent, and resuming it.

- ``paused``: a reservation refused because the day's *spending* leaves no room
  (``BudgetDeferred`` with ``until``, the next UTC midnight) opens the budget pause
  (``state/budget/pause.py``) and turns the queues' consumers off
  (``state/queue_switch.py``; deployed: the event source mappings are disabled), once per
  pause per worker instance. The job is handed back as a deferral, as every job in flight
  is (a new message: no receive count burnt), with a short delay (``PAUSED_DELAY_S``):
  nothing receives it while paused, and it runs soon after the pause is lifted. If the
  switch fails, the job waits the deferral's own delay, as before the pause existed. A
  refusal whose midnight has passed by now opens nothing (the new day has room), and a
  pause lifted while the switch was being turned off (``chatbatch budget set``, the
  schedule) turns it back on: the consumers are never left off with no pause open.
- ``resume_if_due``: what the resume schedule runs (EventBridge, every hour at :00 UTC,
  invoking the worker function with ``RESUME_EVENT``; locally the runtime's clock): lifts
  the pause once the UTC day has reset or the daily limit was raised above the one it was
  reached at, and turns the consumers back on if they were left off with no pause open.

A batch's own limit never pauses the pipeline: that job is deferred as before
(``BATCH_RETRY_S``), other batches run on. Nor does a job whose worst case alone is above
the daily limit (its deferral has no ``until``): it alone waits for a higher limit.
"""

from __future__ import annotations

from aws_lambda_powertools import Logger

from chatbatch.state.budget.errors import BudgetDeferred
from chatbatch.worker import requeue
from chatbatch.worker.intake import Intake
from chatbatch.worker.invocation import Invocation, Outcome, io
from chatbatch.worker.services import Services

logger = Logger(service="chatbatch", child=True)

PAUSED_DELAY_S = 60  # a job handed back while the pipeline pauses: receivable again after


async def paused(inv: Invocation, intake: Intake, err: BudgetDeferred) -> Outcome:
    """The day's budget is spent: pause the pipeline, hand the job back (``deferred``)."""
    delay = err.retry_after_s
    try:
        await io(pause_queues, inv.services, err)
        delay = min(delay, PAUSED_DELAY_S)
    except Exception:  # never lose the job for the pause: it waits as a plain deferral
        logger.exception("could not pause the queues; the job waits as deferred")
    return await requeue.hand_back(inv, intake, delay, Outcome.deferred)


def pause_queues(services: Services, err: BudgetDeferred) -> None:
    """Open the pause and switch the consumers off, once per pause per instance."""
    assert err.until is not None
    if err.until.timestamp() <= services.pause.now():
        return  # refused before midnight, here after it: the new day has room
    current = services.pause.get()
    if current is not None and current.since == services.paused_since:
        return  # this instance switched this pause off already
    pause = services.pause.open(
        str(err), until=err.until.timestamp(), limit_nanos=services.budget.daily_limit_nanos()
    )
    changed = services.switch.set_enabled(False)
    if services.pause.get(fresh=True) is None:  # lifted while the switch went off
        services.switch.set_enabled(True)
        services.paused_since = None
        logger.info("the pause was lifted while the queues were being switched off: back on")
        return
    services.paused_since = pause.since
    logger.warning(
        "pipeline paused: the day's budget is spent",
        extra={
            "reason": pause.reason,
            "why": pause.message,
            "since": pause.since,
            "until": pause.until,
            "mappings_disabled": changed,
        },
    )


def resume_if_due(services: Services) -> str | None:
    """Lift the pause if its day is over or the limit was raised; why, or None."""
    pause = services.pause.get(fresh=True)
    if pause is None:
        if services.switch.set_enabled(True):  # off with no pause open: heal it
            logger.warning("queues were off with no pause open: turned back on")
            return "no pause open"
        return None
    if pause.due(services.pause.now()):
        why = "the UTC day reset"
    elif services.budget.daily_limit_nanos() > pause.limit_nanos:
        why = "the daily limit was raised"
    else:
        return None
    services.pause.lift(services.switch)
    services.paused_since = None
    logger.info("pipeline resumed", extra={"why": why, "since": pause.since})
    return why
