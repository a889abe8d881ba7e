"""``chatbatch budget`` (today's spending, the daily limit, the pause) and ``chatbatch
budget set --daily USD`` (raise or lower the limit; a raise lifts the pause at once),
``chatbatch.client.budget``."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation
from typing import Annotated

import typer

from chatbatch.cli.errors import CliError
from chatbatch.cli.output import emit, say, usd
from chatbatch.cli.params import ConfigOpt, JsonOpt, StackOpt
from chatbatch.client.budget import BudgetView, budget_view, set_daily_limit
from chatbatch.client.deployment import connect
from chatbatch.core.config import load_config
from chatbatch.state.budget.pause import DayPause

budget = typer.Typer(help="The daily budget: spent, limit, pause; `set --daily USD` changes it.")


def pause_line(pause: DayPause) -> str:
    """One line: the pipeline is paused, why, since and until when, and what to do."""
    since = dt.datetime.fromtimestamp(pause.since, dt.UTC).isoformat(timespec="seconds")
    until = dt.datetime.fromtimestamp(pause.until, dt.UTC).isoformat(timespec="seconds")
    return (
        f"PAUSED since {since} until {until}: {pause.message} ({pause.reason}); no job is "
        "received until then; raise it with `chatbatch budget set --daily USD`"
    )


def _show(view: BudgetView) -> None:
    u = view.usage
    say(
        f"budget {u.day}: spent {usd(u.spent_usd)}, reserved {usd(u.reserved_usd)}, "
        f"limit {usd(u.limit_usd)}"
    )
    if view.resumed:
        say("resumed: the queues are receiving again")
    say(pause_line(view.pause) if view.pause else "not paused")


@budget.callback(invoke_without_command=True)
def show(
    ctx: typer.Context,
    stack: StackOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Today's spending, reservations in flight, the daily limit, and the pause."""
    if ctx.invoked_subcommand is not None:
        return
    view = budget_view(connect(load_config(config), stack))
    emit(view) if as_json else _show(view)


@budget.command("set")
def set_(
    daily: Annotated[str, typer.Option("--daily", help="the daily limit in USD, e.g. 250")],
    stack: StackOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set the daily limit (stored for every worker); a pause it leaves room for is lifted
    and the queues receive again at once."""
    try:
        amount = Decimal(daily)
    except InvalidOperation:
        raise CliError(f"--daily {daily!r}: not a number; give USD, e.g. --daily 250") from None
    try:
        view = set_daily_limit(connect(load_config(config), stack), amount)
    except ValueError as err:
        raise CliError(str(err)) from None
    emit(view) if as_json else _show(view)
