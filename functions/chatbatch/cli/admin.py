"""``chatbatch cancel``, ``chatbatch redrive``, ``chatbatch resume`` and ``chatbatch retry``:
the commands that intervene in a running deployment (skip a batch's unstarted jobs; move
dead letters back to their queues; lift a model's pause after an account error; send a
batch's failed jobs again, ``chatbatch.client.retry``)."""

from __future__ import annotations

from typing import Annotated, Literal

import typer
from pydantic import BaseModel
from rich.progress import TaskID, TextColumn
from rich.table import Table

from chatbatch.cli.errors import EXIT_USAGE, CliError
from chatbatch.cli.output import emit, out, progress_bar, say, warn
from chatbatch.cli.params import BatchArg, ConfigOpt, JsonOpt, StackOpt, find_batch
from chatbatch.client.deployment import connect
from chatbatch.client.retry import RetryInterrupted, plan_retry, send_retries
from chatbatch.core.config import Priority, load_config
from chatbatch.state.sender import BATCH_LANE, Lane


class CancelReport(BaseModel):
    batch_id: str
    already_cancelled: bool
    pending: int | None  # jobs not final (waiting ones too: they are skipped as well)


def cancel(
    batch: BatchArg,
    stack: StackOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Cancel a batch: its jobs not yet started are skipped, running ones finish.

    A skipped job costs no provider call; it is counted as cancelled and gets an error
    line (OpenAI's code "batch_cancelled") in `collect`.
    """
    deployment = connect(load_config(config), stack)
    info = find_batch(deployment, batch)
    deployment.batches.cancel(batch)
    pending = info.unfinished  # waiting jobs too: they are skipped as well
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
    moved: dict[str, int]  # by priority, and ``batch`` for the batch route's DLQ
    total: int


def redrive(
    priority: Annotated[
        str | None,
        typer.Option(help="only this priority's DLQ, or `batch`: the batch route's (default: all)"),
    ] = None,
    stack: StackOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Move the messages of the dead-letter queues back to their queues."""
    lanes: list[Lane] = [*Priority, BATCH_LANE]
    if priority is not None and priority not in lanes:
        names = ", ".join(str(lane) for lane in lanes)
        raise CliError(f"--priority {priority!r}: use one of {names}", EXIT_USAGE)
    deployment = connect(load_config(config), stack)
    moved: dict[str, int] = {}
    with progress_bar(as_json, TextColumn("{task.completed} moved")) as progress:
        for p in [lane for lane in lanes if priority in (None, str(lane))]:
            task = progress.add_task(f"{p} DLQ", total=None)

            def show(n: int, task: TaskID = task) -> None:
                progress.update(task, completed=n)

            moved[str(p)] = deployment.redrive(p, show)
    report = RedriveReport(moved=moved, total=sum(moved.values()))
    if as_json:
        emit(report)
        return
    detail = ", ".join(f"{p} {n}" for p, n in moved.items())
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


class RetryReport(BaseModel):
    batch_id: str
    status: Literal["dry_run", "sent", "nothing_to_retry"]
    codes: list[str]  # the --code filter; empty: every code
    selected: int
    by_code: dict[str, int]  # the selected jobs per last error code
    sent: int = 0
    skipped: int = 0  # no longer failed when their turn came (another retry got there first)
    other_codes: dict[str, int]  # failed jobs --code left out, per code
    retrying: int  # sent again before and not finished yet (--stuck sends them again)
    not_retriable: int  # failed as invalid lines: no request was kept to send again


def retry(
    batch: BatchArg,
    code: Annotated[
        list[str] | None,
        typer.Option(
            "--code",
            help="only jobs whose last error has this code (repeatable), e.g. provider_400",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="say how many jobs per code would go; send none")
    ] = False,
    stuck: Annotated[
        bool,
        typer.Option(
            "--stuck",
            help="also send again jobs an interrupted retry left in `retrying` "
            "(a job still queued is called once all the same)",
        ),
    ] = False,
    stack: StackOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Send a batch's failed (and dead-lettered) jobs again, after fixing the cause.

    Each goes out once however many retries run at once; its error line moves to the
    job's history (history/BATCH/CUSTOM_ID/N.json) and `collect` returns its new outcome.
    Invalid lines are not retried: correct them and submit them as a new batch.
    """
    deployment = connect(load_config(config), stack)
    info = find_batch(deployment, batch)
    if info.cancelled:
        raise CliError(
            f"batch {batch} was cancelled: its jobs are not run again (the workers would "
            "cancel them); submit the jobs to run as a new batch"
        )
    codes = sorted(set(code or ()))
    plan = plan_retry(deployment, info, codes, stuck=stuck)
    report = RetryReport(
        batch_id=batch,
        status="dry_run" if dry_run else "nothing_to_retry",
        codes=codes,
        selected=len(plan.jobs),
        by_code=dict(sorted(plan.by_code.items())),
        other_codes=dict(sorted(plan.other_codes.items())),
        retrying=plan.retrying,
        not_retriable=plan.not_retriable,
    )
    if plan.jobs and not dry_run:
        with progress_bar(as_json) as progress:
            task = progress.add_task("retrying", total=len(plan.jobs))
            try:
                result = send_retries(deployment, plan, lambda n: progress.advance(task, n))
            except RetryInterrupted as err:
                raise CliError(str(err)) from err
        report.status, report.sent, report.skipped = "sent", result.sent, result.skipped
    _finish_retry(report, as_json)


def _finish_retry(report: RetryReport, as_json: bool) -> None:
    if as_json:
        emit(report)
        return
    batch = report.batch_id
    if report.selected:
        table = Table(title=f"batch {batch}")
        table.add_column("to send again: last error code")
        table.add_column("jobs", justify="right")
        for name, count in report.by_code.items():
            table.add_row(name, str(count))
        out.print(table)
    if report.status == "sent":
        skipped = (
            f" ({report.skipped} skipped: no longer failed, another retry got there first)"
            if report.skipped
            else ""
        )
        say(
            f"sent {report.sent} job(s) of batch {batch} again{skipped}; follow them with "
            f"`chatbatch status {batch} --watch`, then `chatbatch collect {batch}`"
        )
    elif report.status == "dry_run":
        say(f"dry run: {report.selected} job(s) of batch {batch} would be sent again; nothing sent")
    else:
        wanted = f" with code {', '.join(report.codes)}" if report.codes else ""
        say(f"batch {batch} has no failed job{wanted} to send again")
    if report.other_codes:
        left = ", ".join(f"{name} {count}" for name, count in report.other_codes.items())
        say(f"failed jobs with other codes, not sent: {left}")
    if report.retrying and report.status != "sent":
        say(
            f"{report.retrying} job(s) were sent again before and have not finished; if that "
            f"retry was interrupted, `chatbatch retry {batch} --stuck` sends them"
        )
    if report.not_retriable:
        warn(
            f"{report.not_retriable} failed job(s) of batch {batch} cannot be sent again: "
            "their lines were invalid (code invalid_job), or they failed before failed jobs' "
            "requests were kept; `chatbatch collect` lists them with their errors: correct "
            "them and submit them as a new batch"
        )
