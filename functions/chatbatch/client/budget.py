"""The daily budget as the CLI sees it (``chatbatch budget``): today's spending, the
limit, the pause; and raising the limit (``chatbatch budget set --daily USD``), which,
whenever the new limit leaves room, turns the queues back on at once and lifts the pause
(also with no pause open: consumers left off are turned on).

The limit is the ``budget#limits`` override ``Budget.set_daily_limit`` stores (every
worker reads it at most every 10 s); without one, ``budget.daily_usd`` of the config the
worker was deployed with.
"""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel

from chatbatch.client.deployment import Deployment
from chatbatch.state.budget.ledger import DayUsage
from chatbatch.state.budget.pause import DayPause


class BudgetView(BaseModel):
    """Today's usage and the pause, if the pipeline is paused; ``resumed``: whether the
    command that produced it lifted a pause or turned the queues back on."""

    usage: DayUsage
    pause: DayPause | None
    resumed: bool = False


def budget_view(deployment: Deployment) -> BudgetView:
    return BudgetView(usage=deployment.budget.usage(), pause=deployment.pause.get(fresh=True))


def set_daily_limit(deployment: Deployment, usd: Decimal) -> BudgetView:
    """Store the daily limit; if today's spending is below it, turn the queues on and lift
    the pause (whether or not one is open). Raises ``ValueError`` for an amount that is not
    a positive number; the switch's error if the queues cannot be turned on (the pause
    stays open: run it again)."""
    if not usd.is_finite() or usd <= 0:
        raise ValueError(
            f"--daily {usd}: the daily limit must be a positive amount in USD, e.g. --daily 250"
        )
    deployment.budget.set_daily_limit(usd)
    view = budget_view(deployment)
    if view.usage.spent_usd >= usd:
        return view
    was_on = deployment.switch.enabled()
    lifted = deployment.pause.lift(deployment.switch)
    return BudgetView(usage=view.usage, pause=None, resumed=lifted is not None or not was_on)
