"""``chatbatch batches``: one row per batch of the deployment, newest first: its id, when it
was registered, its counts, its cost and its state."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from enum import StrEnum
from typing import Annotated

import typer
from pydantic import BaseModel
from rich.table import Table

from chatbatch.cli.output import emit, out, usd
from chatbatch.cli.params import ConfigOpt, JsonOpt, StackOpt
from chatbatch.client.deployment import connect
from chatbatch.core.config import load_config
from chatbatch.core.pricing import from_nanos
from chatbatch.state.batches import BatchInfo


class BatchState(StrEnum):
    running = "running"  # jobs queued or being answered
    waiting = "waiting"  # every unfinished job waits: budget, rate limit or a paused model
    complete = "complete"  # every job ended (dead-lettered ones count until redriven)
    cancelled = "cancelled"  # `chatbatch cancel`: its jobs end as they come
    open = "open"  # a `daily-*` batch nobody registered: no total, jobs keep coming


class BatchRow(BaseModel):
    batch_id: str
    created: dt.datetime | None  # when it was registered (UTC)
    total: int | None
    done: int  # succeeded
    failed: int  # failed or dead-lettered
    cost_usd: Decimal
    state: BatchState


class BatchList(BaseModel):
    stack: str
    found: int  # batches in the deployment (rows: the newest ``--limit`` of them)
    batches: list[BatchRow]


def batch_state(info: BatchInfo) -> BatchState:
    if info.cancelled:
        return BatchState.cancelled
    if info.total is None:
        return BatchState.open
    if info.finished >= info.total:
        return BatchState.complete
    if info.finished + info.waiting >= info.total:
        return BatchState.waiting
    return BatchState.running


def batch_row(info: BatchInfo) -> BatchRow:
    created = dt.datetime.fromtimestamp(info.created, dt.UTC) if info.created else None
    return BatchRow(
        batch_id=info.batch_id,
        created=created.replace(microsecond=0) if created else None,
        total=info.total,
        done=info.succeeded,
        failed=info.failed + info.dead_lettered,
        cost_usd=from_nanos(info.cost_nanos),
        state=batch_state(info),
    )


def _table(listing: BatchList) -> Table:
    table = Table(title=f"batches of stack {listing.stack}")
    widest = max((len(row.batch_id) for row in listing.batches), default=2)
    table.add_column("id", no_wrap=True, min_width=widest)  # whole, to copy into a command
    table.add_column("created (UTC)")
    for name in ("total", "done", "failed"):
        table.add_column(name, justify="right")
    table.add_column("cost")
    table.add_column("state", no_wrap=True, min_width=len(BatchState.cancelled))
    for row in listing.batches:
        table.add_row(
            row.batch_id,
            row.created.strftime("%Y-%m-%d %H:%M") if row.created else "-",
            "-" if row.total is None else str(row.total),
            str(row.done),
            str(row.failed),
            usd(row.cost_usd),
            row.state.value,
        )
    if listing.found > len(listing.batches):
        table.caption = f"the newest {len(listing.batches)} of {listing.found} (--limit)"
    return table


def batches(
    limit: Annotated[int, typer.Option("--limit", min=1, help="show the newest N")] = 20,
    stack: StackOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every batch of the deployment, newest first: id, created, total, done, failed, cost,
    state (running, waiting, complete, cancelled, open)."""
    deployment = connect(load_config(config), stack)
    found = deployment.batches.list_all()
    newest = sorted(found, key=lambda b: b.created or 0, reverse=True)[:limit]
    listing = BatchList(
        stack=deployment.stack, found=len(found), batches=[batch_row(b) for b in newest]
    )
    if as_json:
        emit(listing)
    else:
        out.print(_table(listing))
