"""``chatbatch cancel``, ``chatbatch redrive`` and ``chatbatch resume``: the commands that
intervene in a running deployment (skip a batch's unstarted jobs; move dead letters back
to their queues; lift a model's pause after an account error)."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from pydantic import BaseModel
from rich.progress import TaskID, TextColumn

from chatbatch.cli.output import emit, progress_bar, say
from chatbatch.cli.params import BatchArg, ConfigOpt, JsonOpt, StackOpt, find_batch
from chatbatch.cli.status import batch_status
from chatbatch.client.deployment import connect
from chatbatch.core.config import Priority, load_config


class CancelReport(BaseModel):
    batch_id: str
    already_cancelled: bool
    pending: int | None


def cancel(
    batch: BatchArg,
    stack: StackOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Cancel a batch: its jobs not yet started are skipped, running ones finish.

    A skipped job costs no provider call; it is counted as cancelled and gets an error
    line (code "cancelled") in `collect`.
    """
    deployment = connect(load_config(config), stack)
    info = find_batch(deployment, batch)
    deployment.batches.cancel(batch)
    pending = batch_status(info, 0, time.time()).pending
    report = CancelReport(batch_id=batch, already_cancelled=info.cancelled, pending=pending)
    if as_json:
        emit(report)
        return
    if pending == 0:
        say(f"batch {batch} cancelled, but every job of it had already finished")
        return
    left = f"its {pending} unfinished job(s)" if pending is not None else "its unfinished jobs"
    say(
        f"batch {batch} cancelled: {left} will be skipped without a provider call and "
        "counted as cancelled; jobs already running finish"
    )


class RedriveReport(BaseModel):
    moved: dict[Priority, int]
    total: int


def redrive(
    priority: Annotated[
        Priority | None, typer.Option(help="only this priority's DLQ (default: all four)")
    ] = None,
    stack: StackOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Move the messages of the dead-letter queues back to their queues."""
    deployment = connect(load_config(config), stack)
    moved: dict[Priority, int] = {}
    with progress_bar(as_json, TextColumn("{task.completed} moved")) as progress:
        for p in [priority] if priority else list(Priority):
            task = progress.add_task(f"{p.value} DLQ", total=None)

            def show(n: int, task: TaskID = task) -> None:
                progress.update(task, completed=n)

            moved[p] = deployment.redrive(p, show)
    report = RedriveReport(moved=moved, total=sum(moved.values()))
    if as_json:
        emit(report)
        return
    detail = ", ".join(f"{p.value} {n}" for p, n in moved.items())
    say(f"moved {report.total} message(s) from the dead-letter queues back ({detail})")


class ResumeReport(BaseModel):
    resumed: list[str]


def resume(
    model: Annotated[
        str | None, typer.Argument(help="a configured model name; none: every paused model")
    ] = None,
    stack: StackOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Lift the pause of a model that an account error paused (fix the account first).

    Its paused jobs run again when they next come round (within 15 minutes); if the
    error is still there, the next job pauses the model again.
    """
    deployment = connect(load_config(config), stack)
    models = [model] if model else [b.model for b in deployment.breakers.list_open()]
    report = ResumeReport(resumed=[m for m in models if deployment.breakers.close(m)])
    if as_json:
        emit(report)
    elif report.resumed:
        say(f"resumed {', '.join(report.resumed)}: paused jobs run again as they come round")
    else:
        say(f"{model or 'no model'} was not paused")
