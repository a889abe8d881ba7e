"""The daily budget as the CLI sees it (``chatbatch budget``): today's spending, the
limit, the pause; and raising the limit (``chatbatch budget set --daily USD``), which
lifts a pause the new limit leaves room for and turns the queues back on at once.

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
    command that produced it lifted a pause."""

    usage: DayUsage
    pause: DayPause | None
    resumed: bool = False


def budget_view(deployment: Deployment) -> BudgetView:
    return BudgetView(usage=deployment.budget.usage(), pause=deployment.pause.get(fresh=True))


def set_daily_limit(deployment: Deployment, usd: Decimal) -> BudgetView:
    """Store the daily limit; lift the pause (and turn the queues on) if today's spending
    is below it. Raises ``ValueError`` for an amount that is not a positive number."""
    if not usd.is_finite() or usd <= 0:
        raise ValueError(
            f"--daily {usd}: the daily limit must be a positive amount in USD, e.g. --daily 250"
        )
    deployment.budget.set_daily_limit(usd)
    view = budget_view(deployment)
    if view.pause is not None and view.usage.spent_usd < usd:
        deployment.pause.lift(deployment.switch)
        return BudgetView(usage=view.usage, pause=None, resumed=True)
    return view
