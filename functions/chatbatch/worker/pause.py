"""Pausing a model after an account-level error, for every worker (``state/breaker.py``).

- ``gate``: before a job calls the provider it asks the model's breaker (cached per
  worker for a few seconds). Closed: go. Open: the job goes only if it wins the model's
  probe (one request per ``probe_every_s`` across all workers); otherwise it is paused.
- ``pause``: an account error (or an open breaker) hands the job back with a delay, as a
  new message, so its receive count does not grow; its state becomes ``paused``. The
  caller has released its budget reservation. The delay grows with the job's hand-backs
  (``PAUSE_BASE_S`` doubling, at most SQS's 15 minutes) so a long pause costs few
  receives.
- ``opened``: an account error opens (or refreshes) the breaker with the provider's
  status, code and message (the client has redacted any key from it).
- a probe that got an answer closes the breaker (``probe_passed``).
"""

from __future__ import annotations

from enum import Enum

from aws_lambda_powertools import Logger

from chatbatch.provider.errors import ProviderError
from chatbatch.worker import requeue
from chatbatch.worker.intake import Intake
from chatbatch.worker.invocation import Invocation, Outcome, io

logger = Logger(service="chatbatch", child=True)

PAUSE_BASE_S = 30


class Gate(Enum):
    go = "go"  # the breaker is closed
    probe = "probe"  # open, and this job is the model's probe
    paused = "paused"  # open: hand the job back without a call


async def gate(inv: Invocation, model: str) -> Gate:
    breakers = inv.services.breakers
    known, breaker = breakers.cached(model)
    if not known:
        breaker = await io(breakers.get, model)
    if breaker is None:
        return Gate.go
    return Gate.probe if await io(breakers.claim_probe, model) else Gate.paused


async def pause(inv: Invocation, intake: Intake) -> Outcome:
    delay = min(requeue.MAX_DELAY_S, PAUSE_BASE_S * 2 ** min(intake.handbacks, 5))
    return await requeue.hand_back(inv, intake, delay, Outcome.paused)


async def opened(inv: Invocation, model: str, err: ProviderError) -> None:
    assert err.account is not None
    breaker = await io(
        inv.services.breakers.open,
        model,
        err.account.value,
        status=err.status,
        code=err.code,
        message=err.message,
    )
    logger.error(
        "model paused: account-level error from the provider",
        extra={
            "model": model,
            "reason": breaker.reason,
            "status": err.status,
            "code": err.code,
            "error": err.message,
            "since": breaker.since,
        },
    )


async def probe_passed(inv: Invocation, model: str) -> None:
    if await io(inv.services.breakers.close, model):
        logger.info("model resumed: a probe request succeeded", extra={"model": model})
