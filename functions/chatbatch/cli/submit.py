"""``chatbatch submit``: validate a JSONL file, register the batch, send its jobs.

The planning and sending are ``chatbatch.client.submit``'s; this module shows the plan,
the invalid lines (up to ``MAX_SHOWN_ERRORS``) and the outcome.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import BaseModel
from rich.markup import escape
from rich.progress import DownloadColumn
from rich.table import Table

from chatbatch.cli.errors import EXIT_USAGE, CliError
from chatbatch.cli.output import console, duration, emit, out, progress_bar, say, usd, warn
from chatbatch.cli.params import ConfigOpt, JsonOpt, RouteOpt, StackOpt, route_override
from chatbatch.client.deployment import Deployment, connect
from chatbatch.client.submit import (
    Plan,
    RouteTotals,
    check_batch_route,
    checksum_batch_id,
    plan_file,
    register,
    send_file,
    write_manifest,
)
from chatbatch.core.config import Config, Priority, load_config
from chatbatch.core.jobs import BATCH_ID_PATTERN
from chatbatch.core.pricing import to_nanos
from chatbatch.core.principals import caller_principal
from chatbatch.core.routing import Override
from chatbatch.state.batches import (
    BatchInfo,
    RegisteredByAnotherProducer,
    SubmittedFromAnotherFile,
)
from chatbatch.state.sender import NoBatchRoute, Sender

MAX_SHOWN_ERRORS = 100


class RouteReport(BaseModel):
    """One route's share of the file: its jobs per model and their worst-case cost at the
    route's prices (and at the synchronous prices: the difference is what it saves)."""

    jobs: int
    by_model: dict[str, int]
    worst_case_usd: Decimal
    at_sync_prices_usd: Decimal

    @classmethod
    def of(cls, totals: RouteTotals) -> RouteReport:
        return cls(
            jobs=totals.jobs,
            by_model=dict(sorted(totals.by_model.items())),
            worst_case_usd=totals.worst_case_usd,
            at_sync_prices_usd=totals.at_sync_prices_usd,
        )


class SubmitReport(BaseModel):
    batch_id: str
    file: str
    status: Literal["dry_run", "invalid", "already_submitted", "sent", "batch_not_deployed"]
    lines: int
    valid: int
    invalid: int
    errors: list[str]
    by_priority: dict[str, int]
    by_model: dict[str, int]
    worst_case_usd: Decimal
    estimate_s: float
    checksum: str
    route: Override = "auto"
    routes: dict[str, RouteReport] = {}
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
            "routes": {kind: RouteReport.of(totals) for kind, totals in plan.routes.items()},
            **extra,
        }
    )


def _plan(
    path: Path,
    config: Config,
    batch_id: str | None,
    priority: Priority,
    quiet: bool,
    override: Override = "auto",
) -> Plan:
    if not path.is_file():
        raise CliError(f"{path}: no such file; give the path of a JSONL jobs file", EXIT_USAGE)
    if batch_id is not None and not re.fullmatch(BATCH_ID_PATTERN, batch_id):
        raise CliError(
            f"--batch-id {batch_id!r}: use 1-64 letters, digits, '.', '_' or '-'", EXIT_USAGE
        )
    with progress_bar(quiet, DownloadColumn()) as progress:
        task = progress.add_task("validating", total=path.stat().st_size)
        plan = plan_file(
            path,
            config,
            batch_id or "",
            priority,
            on_bytes=lambda n: progress.advance(task, n),
            override=override,
        )
    plan.batch_id = batch_id or ""  # the default id needs the deployment's salt: at send
    return plan


def _show_plan(report: SubmitReport) -> None:
    title = f"batch {report.batch_id}" if report.batch_id else "a new batch"
    table = Table(title=f"{title}: {report.valid} jobs from {report.file}")
    table.add_column("priority / model")
    table.add_column("jobs", justify="right")
    for name, count in report.by_priority.items():
        table.add_row(f"priority {name}", str(count))
    for name, count in report.by_model.items():
        table.add_row(f"model {name}", str(count))
    out.print(table)
    if report.routes.get("batch") and report.routes["batch"].jobs:
        _show_routes(report)
    say(
        f"worst-case cost {usd(report.worst_case_usd)}; at least "
        f"{duration(report.estimate_s)} at the configured rate limits"
    )


def _show_routes(report: SubmitReport) -> None:
    """The split between the synchronous route and the providers' batch APIs."""
    table = Table(title=f"routes (--route {report.route})")
    table.add_column("route / model")
    table.add_column("jobs", justify="right")
    table.add_column("worst case", justify="right")
    table.add_column("at sync prices", justify="right")
    for kind, part in report.routes.items():
        table.add_row(
            f"{kind}", str(part.jobs), usd(part.worst_case_usd), usd(part.at_sync_prices_usd)
        )
        for model, count in part.by_model.items():
            table.add_row(f"  {model}", str(count), "", "")
    out.print(table)
    batch = report.routes["batch"]
    saved = batch.at_sync_prices_usd - batch.worst_case_usd
    say(f"the batch route saves up to {usd(saved)} on {batch.jobs} job(s)")


def _show_invalid(plan: Plan) -> None:
    for err in plan.errors[:MAX_SHOWN_ERRORS]:
        console.print(escape(str(err)), soft_wrap=True, highlight=False)
    more = plan.invalid - min(len(plan.errors), MAX_SHOWN_ERRORS)
    if more:
        console.print(f"... and {more} more invalid line(s)", highlight=False)


def _another_file(err: SubmittedFromAnotherFile) -> CliError:
    return CliError(
        f"batch {err.batch_id!r} was submitted from another file (checksum "
        f"{err.registered[:12]}, this file {err.checksum[:12]}): choose another --batch-id "
        "(--resend sends only the same file again)"
    )


def _already_submitted(
    deployment: Deployment, plan: Plan, resend: bool, as_json: bool
) -> BatchInfo | None:
    """The registered batch of this id, if sending again would be wrong or pointless.

    The checksum comes first, with or without ``--resend``: a different file under a
    batch id would share custom_ids with the first, and ``collect`` would return the
    first file's answers for the second file's prompts.
    """
    info = deployment.batches.get(plan.batch_id)
    if info is None:
        return None
    if info.checksum and info.checksum != plan.checksum:
        raise _another_file(SubmittedFromAnotherFile(plan.batch_id, info.checksum, plan.checksum))
    if resend:
        return None
    if not as_json:
        warn(
            f"batch {plan.batch_id!r} was already submitted from this file: nothing sent "
            "(pass --resend to send it again; finished jobs are skipped, not paid twice)"
        )
    return info


def _send(deployment: Deployment, path: Path, plan: Plan, quiet: bool) -> int:
    sender = Sender(deployment.sqs, deployment.store, deployment.resources)
    with progress_bar(quiet) as progress:
        task = progress.add_task("sending", total=plan.valid)
        return send_file(
            path,
            deployment.config,
            plan,
            sender,
            on_sent=lambda n: progress.advance(task, n),
        )


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
        bool,
        typer.Option(
            "--resend",
            help="send again a batch already submitted from this file (never another file)",
        ),
    ] = False,
    route: RouteOpt = "auto",
    stack: StackOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate FILE, register the batch and send its jobs to the priority queues (and
    those routed to a provider's batch API to the batch route's queue).

    Every line is checked first; if any is invalid, every error is listed with its line
    number and nothing is sent (unless --skip-invalid).
    """
    override = route_override(route)
    cfg = load_config(config)
    plan = _plan(file, cfg, batch_id, priority or cfg.defaults.priority, as_json, override)
    budget = Decimal(str(budget_usd)) if budget_usd is not None else None
    report = _report(plan, file, cfg, "dry_run", budget_usd=budget, route=override)
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
    _refuse_without_batch_route(plan, report, deployment, as_json)
    if not plan.batch_id:
        plan.batch_id = checksum_batch_id(plan.checksum, deployment.batches.id_salt())
        report = report.model_copy(update={"batch_id": plan.batch_id})
    if _already_submitted(deployment, plan, resend, as_json):
        _finish_submit(report.model_copy(update={"status": "already_submitted"}), as_json)
        return
    try:  # checked again in the registering write: a submit racing this one
        me = caller_principal(deployment.aws.client("sts"))
        register(plan, deployment.batches, to_nanos(budget) if budget is not None else None, me)
    except SubmittedFromAnotherFile as err:
        raise _another_file(err) from None
    except RegisteredByAnotherProducer as err:
        raise CliError(str(err)) from None
    write_manifest(file, cfg, plan.batch_id, deployment.store, override=plan.override)
    sent = _send(deployment, file, plan, as_json)
    _finish_submit(report.model_copy(update={"status": "sent", "sent": sent}), as_json)


def _refuse_without_batch_route(
    plan: Plan, report: SubmitReport, deployment: Deployment, as_json: bool
) -> None:
    """Nothing is registered or sent while a job would go to a batch API the deployment
    does not have (a stack from before the route): sending it synchronously instead would
    pay twice what was planned without saying so."""
    try:
        check_batch_route(plan, deployment.resources)
    except NoBatchRoute as err:
        if as_json:
            emit(report.model_copy(update={"status": "batch_not_deployed"}))
        else:
            _show_plan(report)
        raise CliError(
            f"{err}; {report.routes['batch'].jobs} job(s) of {report.valid} would go through "
            f"a provider's batch API (--route {report.route}); nothing was sent"
        ) from None


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
        named = report.batch_id or "derived from the file and the deployment when sent"
        say(f"dry run: nothing sent (batch id {named})")
