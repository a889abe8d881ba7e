"""The `chatbatch` command (not shipped in the Lambda asset).

Every command but ``local`` finds the deployment by its CloudFormation stack's outputs
(``--stack``, default ``stack_name`` in the config; see ``chatbatch.client.deployment``).

Output: tables and summaries on stdout (``--json``: one JSON document instead, one per
refresh with ``status --watch``); progress bars, warnings and errors on stderr. An error is
one line that says what to do, without a traceback unless ``chatbatch --debug``.
Exit codes: 0 done, 1 failed, 2 usage error (bad option or config, missing file),
3 incomplete (``collect``: some jobs have not finished yet).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from decimal import Decimal
from pathlib import Path
from typing import IO, Annotated, Any, Literal, TypeVar

import typer
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
    SSOTokenLoadError,
    TokenRetrievalError,
    UnauthorizedSSOTokenError,
)
from pydantic import BaseModel
from rich.console import Console, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from typer.core import TyperGroup
from typer.exceptions import TyperException

from chatbatch.client.costs import (
    Comparison,
    CostReport,
    GroupBy,
    draw_chart,
    in_order,
    list_keys,
    load_report,
)
from chatbatch.client.deployment import Deployment, QueueDepth, StackNotFound, connect
from chatbatch.client.submit import (
    Plan,
    Sender,
    checksum_batch_id,
    plan_file,
    register,
    send_file,
    write_manifest,
)
from chatbatch.core.config import Config, ConfigError, Priority, load_config
from chatbatch.core.jobs import BATCH_ID_PATTERN
from chatbatch.core.pricing import from_nanos, to_nanos
from chatbatch.state.batches import BatchInfo
from chatbatch.state.budget.ledger import DayUsage
from chatbatch.state.store import error_key, manifest_key, result_key

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3
MAX_SHOWN_ERRORS = 100
DEBUG = "chatbatch.debug"
EXPIRED_CODES = {"ExpiredToken", "ExpiredTokenException", "RequestExpired", "TokenRefreshRequired"}
REJECTED_CODES = {
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AuthFailure",
}
M = TypeVar("M", bound=BaseModel)

console = Console(stderr=True)  # progress, warnings, errors
out = Console()  # results


class CliError(Exception):
    """A failure the user can act on: printed as one line, exit ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def explain(err: Exception) -> tuple[str, int]:
    """One line and an exit code for an exception that ends a command."""
    if isinstance(err, CliError):
        return str(err), err.code
    if isinstance(err, ConfigError):
        return str(err), EXIT_USAGE
    if isinstance(err, StackNotFound):
        return str(err), EXIT_FAILURE
    if isinstance(err, ClientError):
        return _client_error(err), EXIT_FAILURE
    if isinstance(err, BotoCoreError):
        return _botocore_error(err), EXIT_FAILURE
    if isinstance(err, OSError):
        return str(err), EXIT_FAILURE
    return f"unexpected {type(err).__name__}: {err} (run `chatbatch --debug ...` for details)", 1


def _client_error(err: ClientError) -> str:
    error = err.response.get("Error", {})
    code, message = error.get("Code", "?"), error.get("Message", "")
    if code in EXPIRED_CODES:
        return (
            f"your AWS credentials have expired ({code}): refresh them (`aws sso login`, "
            "or new session credentials) and run the command again"
        )
    if code in REJECTED_CODES:
        return (
            f"AWS rejected the credentials ({code}): check AWS_PROFILE or the access keys "
            "(for `chatbatch local up`, export the credentials it printed)"
        )
    return f"AWS {err.operation_name} failed: {code}: {message}"


def _botocore_error(err: BotoCoreError) -> str:
    if isinstance(err, NoCredentialsError | PartialCredentialsError):
        return (
            "no AWS credentials found: run `aws configure` or `aws sso login`, or set "
            "AWS_PROFILE (for `chatbatch local up`, export the credentials it printed)"
        )
    if isinstance(err, TokenRetrievalError | SSOTokenLoadError | UnauthorizedSSOTokenError):
        return f"your AWS login has expired ({err}): run `aws sso login` and try again"
    if isinstance(err, NoRegionError):
        return "no AWS region: set AWS_REGION (or a region in your AWS profile)"
    if isinstance(err, ProfileNotFound):
        return f"{err}: check AWS_PROFILE against ~/.aws/config"
    if isinstance(err, EndpointConnectionError):
        return (
            f"cannot reach {err.kwargs.get('endpoint_url')}: if AWS_ENDPOINT_URL points at "
            "`chatbatch local up`, start it (or unset AWS_ENDPOINT_URL to use AWS)"
        )
    return f"AWS: {err}"


class ChatbatchGroup(TyperGroup):
    """Turns any error of a command into one line and an exit code (``--debug``: raise)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (TyperException, typer.Exit, typer.Abort):
            raise
        except Exception as err:
            if ctx.meta.get(DEBUG):
                raise
            message, code = explain(err)
            error(message)
            raise typer.Exit(code) from None


app = typer.Typer(
    cls=ChatbatchGroup,
    help="Push large volumes of chat-completion jobs through OpenAI-compatible APIs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
local = typer.Typer(help="Run the whole pipeline on this machine (moto + provider simulator).")
app.add_typer(local, name="local")

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="chatbatch.toml (default: ./chatbatch.toml)")
]
StackOpt = Annotated[
    str | None,
    typer.Option(
        "--stack",
        envvar="CHATBATCH_STACK",
        help="CloudFormation stack of the deployment (default: stack_name in the config)",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON on stdout instead of tables")]
BatchArg = Annotated[str, typer.Argument(help="the batch id (`submit` prints it)")]
ThreadsOpt = Annotated[int, typer.Option(min=1, max=64, help="parallel S3 reads")]


@app.callback()
def _options(
    ctx: typer.Context,
    debug: Annotated[
        bool, typer.Option("--debug", envvar="CHATBATCH_DEBUG", help="show tracebacks")
    ] = False,
) -> None:
    ctx.meta[DEBUG] = debug


def error(message: str) -> None:
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True, highlight=False)


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True)


def say(message: str) -> None:
    """A one-line message on stdout (never wrapped: commands in it stay copyable)."""
    out.print(message, soft_wrap=True, highlight=False)


def emit(data: BaseModel) -> None:
    typer.echo(data.model_dump_json(indent=2))


def _usd(value: Decimal) -> str:
    return f"${value:,.4f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _progress(disabled: bool, *columns: ProgressColumn) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        *(columns or (MofNCompleteColumn(),)),
        TimeElapsedColumn(),
        console=console,
        disable=disabled,
        transient=False,
    )


def _config(path: Path | None) -> Config:
    return load_config(path)


def _batch(deployment: Deployment, batch_id: str) -> BatchInfo:
    info = deployment.batches.get(batch_id)
    if info is None:
        raise CliError(
            f"batch {batch_id!r} not found in stack {deployment.stack!r}: check the id "
            "(`chatbatch submit` printed it)"
        )
    return info


# --- submit ----------------------------------------------------------------------------


class SubmitReport(BaseModel):
    batch_id: str
    file: str
    status: Literal["dry_run", "invalid", "already_submitted", "sent"]
    lines: int
    valid: int
    invalid: int
    errors: list[str]
    by_priority: dict[str, int]
    by_model: dict[str, int]
    worst_case_usd: Decimal
    estimate_s: float
    checksum: str
    budget_usd: Decimal | None = None
    sent: int = 0


def _report(plan: Plan, path: Path, config: Config, status: str, **extra: Any) -> SubmitReport:
    return SubmitReport.model_validate(
        {
            "batch_id": plan.batch_id,
            "file": str(path),
            "status": status,
            "lines": plan.lines,
            "valid": plan.valid,
            "invalid": plan.invalid,
            "errors": [str(e) for e in plan.errors],
            "by_priority": {p.value: n for p, n in sorted(plan.by_priority.items())},
            "by_model": dict(sorted(plan.by_model.items())),
            "worst_case_usd": plan.worst_case_usd,
            "estimate_s": round(plan.estimate_s(config), 1),
            "checksum": plan.checksum,
            **extra,
        }
    )


def _plan(
    path: Path, config: Config, batch_id: str | None, priority: Priority, quiet: bool
) -> Plan:
    if not path.is_file():
        raise CliError(f"{path}: no such file; give the path of a JSONL jobs file", EXIT_USAGE)
    if batch_id is not None and not re.fullmatch(BATCH_ID_PATTERN, batch_id):
        raise CliError(
            f"--batch-id {batch_id!r}: use 1-64 letters, digits, '.', '_' or '-'", EXIT_USAGE
        )
    with _progress(quiet, DownloadColumn()) as progress:
        task = progress.add_task("validating", total=path.stat().st_size)
        plan = plan_file(
            path,
            config,
            batch_id or "",
            priority,
            on_bytes=lambda n: progress.advance(task, n),
        )
    plan.batch_id = batch_id or checksum_batch_id(plan.checksum)
    return plan


def _show_plan(report: SubmitReport) -> None:
    table = Table(title=f"batch {report.batch_id}: {report.valid} jobs from {report.file}")
    table.add_column("priority / model")
    table.add_column("jobs", justify="right")
    for name, count in report.by_priority.items():
        table.add_row(f"priority {name}", str(count))
    for name, count in report.by_model.items():
        table.add_row(f"model {name}", str(count))
    out.print(table)
    say(
        f"worst-case cost {_usd(report.worst_case_usd)}; at least "
        f"{_duration(report.estimate_s)} at the configured rate limits"
    )


def _show_invalid(plan: Plan) -> None:
    for err in plan.errors[:MAX_SHOWN_ERRORS]:
        console.print(escape(str(err)), soft_wrap=True, highlight=False)
    more = plan.invalid - min(len(plan.errors), MAX_SHOWN_ERRORS)
    if more:
        console.print(f"... and {more} more invalid line(s)", highlight=False)


def _already_submitted(
    deployment: Deployment, plan: Plan, resend: bool, as_json: bool
) -> BatchInfo | None:
    """The registered batch of this id, if sending again would be wrong or pointless."""
    info = deployment.batches.get(plan.batch_id)
    if info is None or resend:
        return None
    if info.checksum and info.checksum != plan.checksum:
        raise CliError(
            f"batch {plan.batch_id!r} was submitted from another file (checksum "
            f"{info.checksum[:12]}, this file {plan.checksum[:12]}): choose another --batch-id"
        )
    if not as_json:
        warn(
            f"batch {plan.batch_id!r} was already submitted from this file: nothing sent "
            "(pass --resend to send it again; finished jobs are skipped, not paid twice)"
        )
    return info


def _send(deployment: Deployment, path: Path, plan: Plan, quiet: bool) -> int:
    sender = Sender(deployment.sqs, deployment.store, deployment.resources)
    with _progress(quiet) as progress:
        task = progress.add_task("sending", total=plan.valid)
        return send_file(
            path,
            deployment.config,
            plan,
            sender,
            on_sent=lambda n: progress.advance(task, n),
        )


@app.command()
def submit(
    file: Annotated[Path, typer.Argument(help="JSONL file of jobs", show_default=False)],
    priority: Annotated[
        Priority | None,
        typer.Option(help="priority of lines that name none (default: the config's)"),
    ] = None,
    batch_id: Annotated[
        str | None, typer.Option(help="batch id (default: derived from the file's checksum)")
    ] = None,
    budget_usd: Annotated[
        float | None, typer.Option(min=0, help="spend limit of this batch, USD")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="validate and estimate; send nothing")
    ] = False,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="send the valid lines even if some are invalid")
    ] = False,
    resend: Annotated[
        bool, typer.Option("--resend", help="send again a batch already submitted from this file")
    ] = False,
    stack: StackOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate FILE, register the batch and send its jobs to the priority queues.

    Every line is checked first; if any is invalid, every error is listed with its line
    number and nothing is sent (unless --skip-invalid).
    """
    cfg = _config(config)
    plan = _plan(file, cfg, batch_id, priority or cfg.defaults.priority, as_json)
    budget = Decimal(str(budget_usd)) if budget_usd is not None else None
    report = _report(plan, file, cfg, "dry_run", budget_usd=budget)
    if plan.invalid and not as_json:
        _show_invalid(plan)
    if plan.invalid and not skip_invalid:
        if as_json:
            emit(report.model_copy(update={"status": "invalid"}))
        raise CliError(
            f"{file}: {plan.invalid} invalid line(s) of {plan.lines}; nothing was sent "
            "(fix them, or pass --skip-invalid to send the valid ones)"
        )
    if not plan.valid:
        raise CliError(f"{file}: no valid job to send")
    if dry_run:
        _finish_submit(report, as_json)
        return
    deployment = connect(cfg, stack)
    if _already_submitted(deployment, plan, resend, as_json):
        _finish_submit(report.model_copy(update={"status": "already_submitted"}), as_json)
        return
    register(plan, deployment.batches, to_nanos(budget) if budget is not None else None)
    write_manifest(file, cfg, plan.batch_id, deployment.store)
    sent = _send(deployment, file, plan, as_json)
    _finish_submit(report.model_copy(update={"status": "sent", "sent": sent}), as_json)


def _finish_submit(report: SubmitReport, as_json: bool) -> None:
    if as_json:
        emit(report)
        return
    _show_plan(report)
    if report.status == "sent":
        say(
            f"sent {report.sent} jobs as batch [bold]{report.batch_id}[/bold]; follow it with "
            f"`chatbatch status {report.batch_id} --watch`, then "
            f"`chatbatch collect {report.batch_id} -o results.jsonl`"
        )
    elif report.status == "dry_run":
        say(f"dry run: nothing sent (batch id {report.batch_id})")


# --- status ----------------------------------------------------------------------------


class BatchStatus(BaseModel):
    batch_id: str
    total: int | None
    pending: int | None  # queued or running: total - finished - deferred - throttled
    queued: int | None
    running: int | None  # messages in flight on the queues (every batch's), capped at pending
    succeeded: int
    failed: int
    deferred: int
    throttled: int
    dead_lettered: int
    cancelled: int
    batch_cancelled: bool
    cost_usd: Decimal
    budget_usd: Decimal | None
    prompt_tokens: int
    completion_tokens: int
    elapsed_s: float | None
    jobs_per_s: float | None
    eta_s: float | None
    done: bool


class Overview(BaseModel):
    stack: str
    queues: list[QueueDepth]
    budget: DayUsage


def batch_status(info: BatchInfo, in_flight: int, now: float) -> BatchStatus:
    finished = info.finished
    pending = (
        max(0, info.total - finished - info.deferred - info.throttled)
        if info.total is not None
        else None
    )
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
        dead_lettered=info.dead_lettered,
        cancelled=info.cancelled_jobs,
        batch_cancelled=info.cancelled,
        cost_usd=from_nanos(info.cost_nanos),
        budget_usd=from_nanos(info.budget_nanos) if info.budget_nanos is not None else None,
        prompt_tokens=info.prompt_tokens,
        completion_tokens=info.completion_tokens,
        elapsed_s=round(elapsed, 1) if elapsed is not None else None,
        jobs_per_s=round(rate, 2) if rate else None,
        eta_s=round(pending / rate, 1) if rate and pending is not None else None,
        done=pending == 0,
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
            "dead_lettered",
            "cancelled",
        }
    )
    for name in BatchStatus.model_fields:
        if name in counts:
            table.add_row(
                name.replace("_", "-"), "-" if counts[name] is None else str(counts[name])
            )
    budget = f" of {_usd(status.budget_usd)}" if status.budget_usd is not None else ""
    table.add_row("cost", _usd(status.cost_usd) + budget)
    table.add_row("tokens in / out", f"{status.prompt_tokens} / {status.completion_tokens}")
    table.add_row("jobs/s", "-" if status.jobs_per_s is None else f"{status.jobs_per_s:g}")
    table.add_row("elapsed", _duration(status.elapsed_s))
    table.add_row("ETA", "done" if status.done else _duration(status.eta_s))
    return table


def _overview_table(view: Overview) -> Table:
    table = Table(title=f"stack {view.stack}")
    for name in ("priority", "queued", "in flight", "delayed", "dead letters"):
        table.add_column(name, justify="left" if name == "priority" else "right")
    for q in view.queues:
        table.add_row(
            q.priority.value, str(q.queued), str(q.in_flight), str(q.delayed), str(q.dead_letters)
        )
    b = view.budget
    used = f" ({b.spent_usd / b.limit_usd:.1%})" if b.limit_usd else ""
    table.caption = (
        f"budget {b.day} (UTC): spent {_usd(b.spent_usd)}{used}, "
        f"reserved {_usd(b.reserved_usd)}, limit {_usd(b.limit_usd)}"
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


@app.command()
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
    deployment = connect(_config(config), stack)
    if batch is None:

        def read_overview() -> Overview:
            return Overview(
                stack=deployment.stack,
                queues=deployment.queue_depths(),
                budget=deployment.budget.usage(),
            )

        _show(read_overview, _overview_table, watch, interval, as_json, lambda _: False)
        return
    _batch(deployment, batch)

    def read_batch() -> BatchStatus:
        in_flight = sum(q.in_flight for q in deployment.queue_depths())
        return batch_status(_batch(deployment, batch), in_flight, time.time())

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


# --- collect ---------------------------------------------------------------------------


class CollectReport(BaseModel):
    batch_id: str
    output: str
    errors_file: str | None
    source: Literal["manifest", "listing"]
    results: int = 0
    errors: int = 0
    unfinished: int = 0


Outcome = tuple[str | None, bool]  # (the stored line or None if unfinished, is a result)


def _manifest(deployment: Deployment, batch_id: str) -> Iterator[str] | None:
    """The batch's custom_ids in input order, streamed; None if it has no manifest."""
    s3 = deployment.s3
    try:
        body = s3.get_object(Bucket=deployment.resources.bucket, Key=manifest_key(batch_id))
    except s3.exceptions.NoSuchKey:
        return None
    return (json.loads(line) for line in body["Body"].iter_lines() if line.strip())


def _outcomes_by_manifest(
    deployment: Deployment, batch_id: str, ids: Iterable[str], threads: int
) -> Iterator[Outcome]:
    store = deployment.store

    def outcome(custom_id: str) -> Outcome:
        text = store.get_text(result_key(batch_id, custom_id))
        if text is not None:
            return text, True
        return store.get_text(error_key(batch_id, custom_id)), False

    return in_order(ids, outcome, threads)


def _outcomes_by_listing(deployment: Deployment, batch_id: str, threads: int) -> Iterator[Outcome]:
    """Jobs from other producers (no manifest): results, then errors of jobs without one."""
    s3, bucket, store = deployment.s3, deployment.resources.bucket, deployment.store
    succeeded: set[str] = set()

    def results() -> Iterator[str]:
        for key in list_keys(s3, bucket, f"results/{batch_id}/"):
            succeeded.add(key.rsplit("/", 1)[-1])
            yield key

    def errors() -> Iterator[str]:
        for key in list_keys(s3, bucket, f"errors/{batch_id}/"):
            if key.rsplit("/", 1)[-1] not in succeeded:
                yield key

    for text in in_order(results(), store.get_text, threads):
        yield text, True
    for text in in_order(errors(), store.get_text, threads):
        yield text, False


@contextmanager
def _writer(path: Path | None, fallback: IO[str] | None = None) -> Iterator[IO[str]]:
    if path is None and fallback is not None:
        yield fallback
    elif path is None or str(path) == "-":
        yield typer.get_text_stream("stdout")
    else:
        with path.open("w", encoding="utf-8") as handle:
            yield handle


@app.command()
def collect(
    batch: BatchArg,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="results JSONL ('-': stdout)")
    ] = Path("results.jsonl"),
    errors: Annotated[
        Path | None,
        typer.Option("--errors", help="error lines go here (default: with the results)"),
    ] = None,
    threads: ThreadsOpt = 16,
    stack: StackOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a batch's results (OpenAI Batch output lines) in input order, as they are read.

    Exit code 3 when some jobs have not finished yet (run collect again later).
    """
    deployment = connect(_config(config), stack)
    info = deployment.batches.get(batch)
    ids = _manifest(deployment, batch)
    if info is None and ids is None:
        _batch(deployment, batch)  # raises: unknown batch
    report = CollectReport(
        batch_id=batch,
        output=str(output),
        errors_file=str(errors) if errors else None,
        source="manifest" if ids is not None else "listing",
    )
    outcomes = (
        _outcomes_by_manifest(deployment, batch, ids, threads)
        if ids is not None
        else _outcomes_by_listing(deployment, batch, threads)
    )
    total = info.total if info else None
    with (
        _writer(output) as results,
        _writer(errors, results) as failures,
        _progress(as_json or str(output) == "-") as progress,
    ):
        task = progress.add_task("collecting", total=total)
        for text, ok in outcomes:
            progress.advance(task)
            if text is None:
                report.unfinished += 1
                continue
            (results if ok else failures).write(text.rstrip("\n") + "\n")
            report.results += ok
            report.errors += not ok
    if report.source == "listing" and total is not None:
        report.unfinished = max(0, total - report.results - report.errors)
    _finish_collect(report, as_json)


def _finish_collect(report: CollectReport, as_json: bool) -> None:
    if as_json:
        emit(report)
    else:
        where = f" and {report.errors_file}" if report.errors_file else ""
        console.print(
            f"{report.results} results and {report.errors} errors written to "
            f"{report.output}{where}",
            highlight=False,
            soft_wrap=True,
        )
    if report.unfinished:
        warn(
            f"{report.unfinished} job(s) of batch {report.batch_id} have not finished yet "
            "(queued, running or deferred): run collect again later"
        )
        raise typer.Exit(EXIT_INCOMPLETE)


# --- costs -----------------------------------------------------------------------------


class CostsOutput(BaseModel):
    batch: str | None
    since: dt.date | None
    by: GroupBy
    days: int
    jobs: int
    total_usd: Decimal
    daily_usd: Decimal
    annual_usd: Decimal
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    groups: dict[str, Any]
    compare: list[Comparison] | None = None
    chart: str | None = None


def _costs_output(
    report: CostReport, batch: str | None, comparison: list[Comparison] | None, chart: Path | None
) -> CostsOutput:
    total = report.total
    days = report.days
    return CostsOutput(
        batch=batch,
        since=report.since,
        by=report.by,
        days=days,
        jobs=total.jobs,
        total_usd=total.cost_usd,
        daily_usd=total.cost_usd / days if days else Decimal(0),
        annual_usd=report.annual(total.cost_usd),
        prompt_tokens=total.prompt_tokens,
        cached_tokens=total.cached_tokens,
        completion_tokens=total.completion_tokens,
        groups={k: v.model_dump() for k, v in sorted(report.groups.items())},
        compare=comparison,
        chart=str(chart) if chart else None,
    )


def _costs_tables(result: CostsOutput) -> None:
    table = Table(
        title=f"costs by {result.by.value}" + (f", batch {result.batch}" if result.batch else "")
    )
    for name in (result.by.value, "jobs", "prompt (cached)", "completion", "USD"):
        table.add_column(name, justify="left" if name == result.by.value else "right")
    for name, group in result.groups.items():
        table.add_row(
            name,
            str(group["jobs"]),
            f"{group['prompt_tokens']} ({group['cached_tokens']})",
            str(group["completion_tokens"]),
            _usd(group["cost_usd"]),
        )
    table.caption = (
        f"total {_usd(result.total_usd)} over {result.days} day(s): "
        f"{_usd(result.daily_usd)}/day, {_usd(result.annual_usd)}/year at this rate"
    )
    out.print(table)
    if result.compare:
        compare = Table(title="the same token usage on every model")
        for name in ("model", "USD", "per year", "x actual"):
            compare.add_column(name, justify="left" if name == "model" else "right")
        for row in result.compare:
            ratio = f"{row.ratio:.2f}" if row.ratio is not None else "-"
            compare.add_row(row.model, _usd(row.cost_usd), _usd(row.annual_usd), ratio)
        out.print(compare)


@app.command()
def costs(
    batch: Annotated[str | None, typer.Option(help="only this batch")] = None,
    since: Annotated[
        dt.datetime | None,
        typer.Option(formats=["%Y-%m-%d"], help="first UTC day (default: all days)"),
    ] = None,
    by: Annotated[GroupBy, typer.Option(help="group the totals by")] = GroupBy.model,
    compare: Annotated[
        bool, typer.Option("--compare", help="price the same usage on every model; project a year")
    ] = False,
    chart: Annotated[
        Path | None, typer.Option(help="draw a PNG: cost per day by model (+ the comparison)")
    ] = None,
    threads: ThreadsOpt = 16,
    stack: StackOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Cost totals from the cost records (one per finished job), grouped, compared, charted."""
    cfg = _config(config)
    deployment = connect(cfg, stack)
    with _progress(as_json, TextColumn("{task.completed} records")) as progress:
        task = progress.add_task("reading cost records", total=None)
        report = load_report(
            deployment.s3,
            deployment.resources.bucket,
            since=since.date() if since else None,
            batch=batch,
            by=by,
            threads=threads,
            on_record=lambda _: progress.advance(task),
        )
    if batch and not report.total.jobs and deployment.batches.get(batch) is None:
        _batch(deployment, batch)  # raises: unknown batch
    comparison = report.compare(cfg) if compare else None
    if chart:
        draw_chart(report, comparison or [], chart)
    result = _costs_output(report, batch, comparison, chart)
    if as_json:
        emit(result)
        return
    _costs_tables(result)
    if chart:
        console.print(f"chart written to {chart}", highlight=False)


# --- cancel, redrive -------------------------------------------------------------------


class CancelReport(BaseModel):
    batch_id: str
    already_cancelled: bool
    pending: int | None


@app.command()
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
    deployment = connect(_config(config), stack)
    info = _batch(deployment, batch)
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


@app.command()
def redrive(
    priority: Annotated[
        Priority | None, typer.Option(help="only this priority's DLQ (default: all four)")
    ] = None,
    stack: StackOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Move the messages of the dead-letter queues back to their queues."""
    deployment = connect(_config(config), stack)
    moved: dict[Priority, int] = {}
    with _progress(as_json, TextColumn("{task.completed} moved")) as progress:
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


# --- local -----------------------------------------------------------------------------

ProviderUrlOpt = Annotated[
    str | None,
    typer.Option(
        help="a real OpenAI-compatible /v1 URL instead of the simulator "
        "(key from CHATBATCH_API_KEY, else OPENAI_API_KEY)"
    ),
]
RpmOpt = Annotated[int | None, typer.Option(help="requests/min for every model")]
TpmOpt = Annotated[int | None, typer.Option(help="tokens/min for every model")]
BudgetOpt = Annotated[float | None, typer.Option(help="daily budget in USD")]
ConcurrencyOpt = Annotated[int | None, typer.Option(help="max concurrent workers per priority")]
SeedOpt = Annotated[int, typer.Option(help="seed of the simulator's faults")]
LatencyOpt = Annotated[float, typer.Option(help="simulator latency")]
FaultsOpt = Annotated[
    str | None,
    typer.Option(help='simulator fault rates as JSON, e.g. \'{"500": 0.05, "reset": 0.02}\''),
]


def _local_options(
    *,
    sim_latency_ms: float,
    sim_faults: str | None,
    seed: int,
    budget_usd: float | None,
    sim_rpm: int | None = None,
    sim_tpm: int | None = None,
    **options: Any,
) -> Any:
    from chatbatch.local.options import LocalOptions
    from chatbatch.local.simulator import SimulatorSettings

    try:
        faults = json.loads(sim_faults) if sim_faults else {}
        settings = SimulatorSettings(
            latency_ms=sim_latency_ms, rpm=sim_rpm, tpm=sim_tpm, fault_rates=faults, seed=seed
        )
    except ValueError as err:
        raise CliError(f"--sim-*: {err}", EXIT_USAGE) from None
    budget = Decimal(str(budget_usd)) if budget_usd is not None else None
    return LocalOptions(seed=seed, simulator=settings, budget_usd=budget, **options)


@local.command("run")
def local_run(
    jobs: Annotated[Path, typer.Argument(help="JSONL file of jobs")],
    out_dir: Annotated[Path, typer.Option("--out", help="directory for the outputs")] = Path("out"),
    provider_url: ProviderUrlOpt = None,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    budget_usd: BudgetOpt = None,
    priority: Annotated[
        Priority | None, typer.Option(help="priority of lines that name none")
    ] = None,
    concurrency: ConcurrencyOpt = None,
    config: ConfigOpt = None,
    seed: SeedOpt = 0,
    sim_latency_ms: LatencyOpt = 0.0,
    sim_rpm: Annotated[int | None, typer.Option(help="simulator's own requests/min")] = None,
    sim_tpm: Annotated[int | None, typer.Option(help="simulator's own tokens/min")] = None,
    sim_faults: FaultsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print summary.json")] = False,
) -> None:
    """Run JOBS through the local pipeline; write results, errors, costs and a summary to --out.

    Outputs: OUT/results.jsonl (input order), OUT/errors.jsonl, OUT/costs.jsonl,
    OUT/summary.json, and the worker's JSON logs in OUT/worker.log.
    """
    from chatbatch.local.runtime import LocalRuntime

    if not jobs.is_file():
        raise CliError(f"{jobs}: no such file; give the path of a JSONL jobs file", EXIT_USAGE)
    options = _local_options(
        config_path=config,
        provider_url=provider_url,
        rpm=rpm,
        tpm=tpm,
        budget_usd=budget_usd,
        priority=priority,
        concurrency=concurrency,
        seed=seed,
        sim_latency_ms=sim_latency_ms,
        sim_rpm=sim_rpm,
        sim_tpm=sim_tpm,
        sim_faults=sim_faults,
        log_file=out_dir / "worker.log",
    )
    with LocalRuntime(options) as runtime, _progress(as_json) as progress:
        task = progress.add_task("jobs", total=None)

        def show(info: BatchInfo, total: int) -> None:
            progress.update(task, total=total, completed=info.finished + info.deferred)

        summary = runtime.run(jobs, out_dir, on_progress=show)
    if as_json:
        emit(summary)
        return
    table = Table(title=f"chatbatch local run: {jobs} -> {out_dir}/")
    table.add_column("", style="bold")
    table.add_column("value", justify="right")
    for key, value in summary.model_dump(exclude={"aws_requests"}).items():
        table.add_row(key, str(value))
    out.print(table)


class LocalUp(BaseModel):
    stack: str
    endpoint: str
    simulator: str | None
    env: dict[str, str]


@local.command("up")
def local_up(
    port: Annotated[int, typer.Option(help="moto's port (0: any free port)")] = 4566,
    provider_url: ProviderUrlOpt = None,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    budget_usd: BudgetOpt = None,
    concurrency: ConcurrencyOpt = None,
    config: ConfigOpt = None,
    seed: SeedOpt = 0,
    sim_latency_ms: LatencyOpt = 0.0,
    sim_faults: FaultsOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the endpoint and environment as JSON")
    ] = False,
) -> None:
    """Serve the local pipeline to other terminals until Ctrl-C.

    moto's server stands in for AWS, the simulator for the chat API, and emulated Lambda
    workers consume the queues. The config's stack is registered in moto, so every other
    command finds it once the printed environment is exported.
    """
    from chatbatch.local.aws import FAKE_CREDENTIALS
    from chatbatch.local.runtime import LocalRuntime

    options = _local_options(
        config_path=config,
        provider_url=provider_url,
        rpm=rpm,
        tpm=tpm,
        budget_usd=budget_usd,
        concurrency=concurrency,
        seed=seed,
        sim_latency_ms=sim_latency_ms,
        sim_faults=sim_faults,
        server=True,
        port=port,
    )
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    with LocalRuntime(options) as runtime:
        runtime.register_stack()
        env = {"AWS_ENDPOINT_URL": runtime.endpoint or ""} | FAKE_CREDENTIALS
        env.pop("AWS_DEFAULT_REGION", None)
        up = LocalUp(
            stack=runtime.config.stack_name,
            endpoint=runtime.endpoint or "",
            simulator=runtime.simulator.base_url if runtime.simulator else None,
            env=env,
        )
        _announce(up, config, as_json)
        _wait_for_stop()
    console.print("stopped; the local state is gone with it")


def _wait_for_stop() -> None:
    """Block until Ctrl-C or SIGTERM (also when started in the background, where a shell
    may have set SIGINT to be ignored)."""
    stop = threading.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in signals}
    try:
        stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _announce(up: LocalUp, config: Path | None, as_json: bool) -> None:
    if as_json:
        typer.echo(up.model_dump_json())
        return
    console.print(
        f"chatbatch local runtime up: stack [bold]{up.stack}[/bold] at {up.endpoint}, "
        f"chat API {up.simulator or 'your --provider-url'}. In another terminal:",
        highlight=False,
        soft_wrap=True,
    )
    typer.echo("\n".join(f"export {name}={value}" for name, value in up.env.items()))
    option = f" --config {config}" if config else ""
    console.print(
        f"then e.g. `chatbatch submit jobs.jsonl{option}` and `chatbatch status{option}`. "
        "Ctrl-C stops it (its state lives in memory and goes with it).",
        highlight=False,
        soft_wrap=True,
    )


@local.command(
    "simulator",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def local_simulator(ctx: typer.Context) -> None:
    """Run the provider simulator (an OpenAI-compatible chat API) in the foreground.

    Options: --port N (0: any free), --host, --api-key, --model ID, --rpm, --tpm,
    --latency-ms, --per-token-ms, --answer-tokens, --seed, --fault KIND=RATE, --hang-s,
    --outage-at-s, --outage-s (`chatbatch local simulator --help` lists them).
    """
    from chatbatch.local.simulator import parse_args, serve

    settings, host, port = parse_args(ctx.args)
    serve(settings, host, port)


def main() -> None:
    app()
