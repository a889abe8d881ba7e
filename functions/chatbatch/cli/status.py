"""``chatbatch status``: a batch's counts, cost, speed and ETA, or the queues and today's
budget; once, or refreshed with ``--watch``."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from contextlib import nullcontext, suppress
from decimal import Decimal
from typing import Annotated, TypeVar

import typer
from pydantic import BaseModel
from rich.console import RenderableType
from rich.live import Live
from rich.table import Table

from chatbatch.cli.budget import pause_line
from chatbatch.cli.output import duration, emit, out, usd
from chatbatch.cli.params import ConfigOpt, JsonOpt, StackOpt, find_batch
from chatbatch.client.deployment import QueueDepth, connect
from chatbatch.core.config import load_config
from chatbatch.core.pricing import from_nanos
from chatbatch.state.batches import BatchInfo
from chatbatch.state.breaker import Breaker
from chatbatch.state.budget.ledger import DayUsage
from chatbatch.state.budget.pause import DayPause

M = TypeVar("M", bound=BaseModel)


class BatchStatus(BaseModel):
    batch_id: str
    total: int | None
    pending: int | None  # queued or running: total - finished - waiting (``BatchInfo.waiting``)
    queued: int | None
    running: int | None  # messages in flight on the queues (every batch's), capped at pending
    succeeded: int
    failed: int
    deferred: int
    throttled: int
    paused: int
    batched: int = 0  # in a provider's batch (the batch route)
    dead_lettered: int
    cancelled: int
    batch_cancelled: bool
    cost_usd: Decimal
    budget_usd: Decimal | None
    prompt_tokens: int  # billed by the provider: response-cache hits are not in these two
    completion_tokens: int
    cached_jobs: int  # succeeded from the response cache (included in succeeded)
    cache_saved_tokens: int  # prompt + completion tokens of the answers the cache gave
    elapsed_s: float | None
    jobs_per_s: float | None
    eta_s: float | None
    done: bool  # every job final (``BatchInfo.complete``)


class Overview(BaseModel):
    stack: str
    queues: list[QueueDepth]
    budget: DayUsage
    paused: list[Breaker] = []  # models paused by an account error
    budget_pause: DayPause | None = None  # every queue paused: the day's budget is spent


def batch_status(info: BatchInfo, in_flight: int, now: float) -> BatchStatus:
    finished = info.finished
    pending = max(0, info.total - finished - info.waiting) if info.total is not None else None
    running = min(pending, in_flight) if pending is not None else None
    elapsed = now - info.created if info.created else None
    rate = finished / elapsed if elapsed and finished else None
    return BatchStatus(
        batch_id=info.batch_id,
        total=info.total,
        pending=pending,
        queued=pending - running if pending is not None and running is not None else None,
        running=running,
        succeeded=info.succeeded,
        failed=info.failed,
        deferred=info.deferred,
        throttled=info.throttled,
        paused=info.paused,
        batched=info.batched,
        dead_lettered=info.dead_lettered,
        cancelled=info.cancelled_jobs,
        batch_cancelled=info.cancelled,
        cost_usd=from_nanos(info.cost_nanos),
        budget_usd=from_nanos(info.budget_nanos) if info.budget_nanos is not None else None,
        prompt_tokens=info.prompt_tokens,
        completion_tokens=info.completion_tokens,
        cached_jobs=info.cached_jobs,
        cache_saved_tokens=info.cache_saved_tokens,
        elapsed_s=round(elapsed, 1) if elapsed is not None else None,
        jobs_per_s=round(rate, 2) if rate else None,
        eta_s=round(pending / rate, 1) if rate and pending is not None else None,
        done=info.complete,  # every job final: a throttled job is back within seconds
    )


def _batch_table(status: BatchStatus) -> Table:
    title = f"batch {status.batch_id}" + (" (cancelled)" if status.batch_cancelled else "")
    table = Table(title=title, show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    counts = status.model_dump(
        include={
            "total",
            "queued",
            "running",
            "succeeded",
            "failed",
            "deferred",
            "throttled",
            "paused",
            "dead_lettered",
            "cancelled",
        }
    )
    for name in BatchStatus.model_fields:
        if name in counts:
            table.add_row(
                name.replace("_", "-"), "-" if counts[name] is None else str(counts[name])
            )
    budget = f" of {usd(status.budget_usd)}" if status.budget_usd is not None else ""
    table.add_row("cost", usd(status.cost_usd) + budget)
    table.add_row("tokens in / out", f"{status.prompt_tokens} / {status.completion_tokens}")
    table.add_row("cache hits", f"{status.cached_jobs} ({status.cache_saved_tokens} tokens saved)")
    table.add_row("jobs/s", "-" if status.jobs_per_s is None else f"{status.jobs_per_s:g}")
    table.add_row("elapsed", duration(status.elapsed_s))
    table.add_row("ETA", "done" if status.done else duration(status.eta_s))
    return table


def _overview_table(view: Overview) -> Table:
    table = Table(title=f"stack {view.stack}")
    for name in ("priority", "queued", "in flight", "delayed", "dead letters"):
        table.add_column(name, justify="left" if name == "priority" else "right")
    for q in view.queues:
        table.add_row(
            str(q.priority), str(q.queued), str(q.in_flight), str(q.delayed), str(q.dead_letters)
        )
    b = view.budget
    used = f" ({b.spent_usd / b.limit_usd:.1%})" if b.limit_usd else ""
    table.caption = (
        f"budget {b.day} (UTC): spent {usd(b.spent_usd)}{used}, "
        f"reserved {usd(b.reserved_usd)}, limit {usd(b.limit_usd)}"
    )
    if view.budget_pause is not None:
        table.caption += "\n" + pause_line(view.budget_pause)
    for paused in view.paused:
        since = dt.datetime.fromtimestamp(paused.since, dt.UTC).isoformat(timespec="seconds")
        status = f"HTTP {paused.status}" if paused.status is not None else "no status"
        code = f" {paused.code}" if paused.code else ""
        table.caption += (
            f"\nPAUSED {paused.model} since {since}: {paused.reason} ({status}{code}): "
            f"{paused.message}; fix it, then `chatbatch resume {paused.model}`"
        )
    return table


def _watch(
    read: Callable[[], M],
    render: Callable[[M], RenderableType],
    *,
    interval: float,
    as_json: bool,
    done: Callable[[M], bool],
) -> None:
    """Refresh until ``done`` or Ctrl-C (JSON: one document per refresh, one per line)."""
    live = None if as_json else Live(console=out, auto_refresh=False)
    with suppress(KeyboardInterrupt), live or nullcontext():
        while True:
            view = read()
            if live:
                live.update(render(view), refresh=True)
            else:
                typer.echo(view.model_dump_json())
            if done(view):
                return
            time.sleep(interval)


def status(
    batch: Annotated[str | None, typer.Argument(help="a batch id; none: the queues")] = None,
    watch: Annotated[
        bool, typer.Option("--watch", help="refresh until done (Ctrl-C stops)")
    ] = False,
    interval: Annotated[float, typer.Option(min=0.1, help="seconds between refreshes")] = 2.0,
    stack: StackOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A batch's counts, cost, speed and ETA; without BATCH, the queues and today's budget."""
    deployment = connect(load_config(config), stack)
    if batch is None:

        def read_overview() -> Overview:
            return Overview(
                stack=deployment.stack,
                queues=deployment.queue_depths(),
                budget=deployment.budget.usage(),
                paused=deployment.breakers.list_open(),
                budget_pause=deployment.pause.get(fresh=True),
            )

        _show(read_overview, _overview_table, watch, interval, as_json, lambda _: False)
        return
    find_batch(deployment, batch)

    def read_batch() -> BatchStatus:
        in_flight = sum(q.in_flight for q in deployment.queue_depths())
        return batch_status(find_batch(deployment, batch), in_flight, time.time())

    _show(read_batch, _batch_table, watch, interval, as_json, lambda s: s.done)


def _show(
    read: Callable[[], M],
    render: Callable[[M], RenderableType],
    watch: bool,
    interval: float,
    as_json: bool,
    done: Callable[[M], bool],
) -> None:
    if watch:
        _watch(read, render, interval=interval, as_json=as_json, done=done)
    elif as_json:
        emit(read())
    else:
        out.print(render(read()))
