"""``chatbatch costs``: totals from the cost records, grouped, compared across models,
projected to a year and charted."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import typer
from pydantic import BaseModel
from rich.progress import TextColumn
from rich.table import Table

from chatbatch.cli.errors import EXIT_USAGE, CliError
from chatbatch.cli.output import console, emit, out, progress_bar, usd
from chatbatch.cli.params import ConfigOpt, JsonOpt, StackOpt, ThreadsOpt, find_batch
from chatbatch.client.athena_costs import AthenaError, AthenaQuery, athena_report
from chatbatch.client.cost_groups import BadGrouping, Grouping, group_name, group_order
from chatbatch.client.costs import Comparison, CostReport, Totals, draw_chart, load_report
from chatbatch.client.deployment import Deployment, connect
from chatbatch.core.config import Model, load_config


class CostGroup(Totals):
    """One group's figures, with its key: each --by key's value (null: the records have
    none) and the values joined for display (``name``: null shown as ``(none)``)."""

    key: list[str | None]
    name: str


class CostsOutput(BaseModel):
    batch: str | None
    since: dt.date | None
    by: str  # the --by keys, comma-separated: `model`, `model,metadata.tenant`
    days: int
    jobs: int
    total_usd: Decimal
    daily_usd: Decimal
    annual_usd: Decimal
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    estimated_calls: int  # booked at their worst case (no usage came back); in total_usd
    estimated_usd: Decimal
    # the batch route's records (in the figures above): their jobs, what they paid, and
    # what the same tokens would have cost beyond it at the synchronous prices
    batch_jobs: int = 0
    batch_usd: Decimal = Decimal(0)
    saved_usd: Decimal = Decimal(0)
    saved_unpriced_models: list[
        str
    ] = []  # batch records' models not in the config: not in saved_usd
    groups: list[CostGroup]  # ordered by key, a missing value first
    compare: list[Comparison] | None = None
    chart: str | None = None
    athena_query_id: str | None = None  # with --athena: the query that added them up
    athena_scanned_bytes: int | None = None


def _costs_output(
    report: CostReport, batch: str | None, comparison: list[Comparison] | None, chart: Path | None
) -> CostsOutput:
    total = report.total
    days = report.days
    return CostsOutput(
        batch=batch,
        since=report.since,
        by=report.by.label,
        days=days,
        jobs=total.jobs,
        total_usd=total.cost_usd,
        daily_usd=total.cost_usd / days if days else Decimal(0),
        annual_usd=report.annual(total.cost_usd),
        prompt_tokens=total.prompt_tokens,
        cached_tokens=total.cached_tokens,
        completion_tokens=total.completion_tokens,
        estimated_calls=total.estimated_calls,
        estimated_usd=total.estimated_usd,
        batch_jobs=total.batch_jobs,
        batch_usd=total.batch_usd,
        saved_usd=total.saved_usd,
        saved_unpriced_models=sorted(report.unpriced),
        groups=[
            CostGroup(key=list(key), name=group_name(key), **report.groups[key].model_dump())
            for key in sorted(report.groups, key=group_order)
        ],
        compare=comparison,
        chart=str(chart) if chart else None,
    )


def _costs_tables(result: CostsOutput) -> None:
    table = Table(
        title=f"costs by {result.by}" + (f", batch {result.batch}" if result.batch else "")
    )
    batch = result.batch_jobs > 0  # a saved column only when the batch route was used
    for name in (result.by, "jobs", "prompt (cached)", "completion", "USD", *["saved"] * batch):
        table.add_column(name, justify="left" if name == result.by else "right")
    for group in result.groups:
        table.add_row(
            group.name,
            str(group.jobs),
            f"{group.prompt_tokens} ({group.cached_tokens})",
            str(group.completion_tokens),
            usd(group.cost_usd),
            *[usd(group.saved_usd)] * batch,
        )
    table.caption = (
        f"total {usd(result.total_usd)} over {result.days} day(s): "
        f"{usd(result.daily_usd)}/day, {usd(result.annual_usd)}/year at this rate"
    )
    if result.estimated_calls:
        table.caption += (
            f"; {usd(result.estimated_usd)} of it is {result.estimated_calls} call(s) "
            "booked at their worst case (the provider's usage never came back)"
        )
    if batch:
        table.caption += (
            f"; batch route: {result.batch_jobs} job(s), {usd(result.batch_usd)} paid, "
            f"{usd(result.saved_usd)} saved against the synchronous prices"
        )
    if result.saved_unpriced_models:
        table.caption += (
            f" (not counting {', '.join(result.saved_unpriced_models)}: no longer in the "
            "config, no synchronous price)"
        )
    out.print(table)
    if result.compare:
        _compare_table(result.compare)


def _compare_table(rows: list[Comparison]) -> None:
    """``--compare``: each model at its synchronous prices, as it always printed; then, when
    any model has a batch API, those models at their batch prices in a table of their own
    (the first keeps its columns, so its lines read as before)."""
    _priced_table(
        "the same token usage on every model",
        [(row.model, row.cost_usd, row.annual_usd, row.ratio) for row in rows],
    )
    batch = [
        (row.model, row.batch_cost_usd, row.batch_annual_usd, row.batch_ratio)
        for row in rows
        if row.batch_cost_usd is not None and row.batch_annual_usd is not None
    ]
    if batch:
        batch.sort(key=lambda row: row[1])
        _priced_table("the same token usage at the batch prices (models with a batch API)", batch)


def _priced_table(title: str, rows: list[tuple[str, Decimal, Decimal, Decimal | None]]) -> None:
    """Rows of model, USD, USD per year, and that over the actual cost."""
    table = Table(title=title)
    for name in ("model", "USD", "per year", "x actual"):
        table.add_column(name, justify="left" if name == "model" else "right")
    for model, cost_usd, annual_usd, ratio in rows:
        table.add_row(model, usd(cost_usd), usd(annual_usd), _ratio(ratio))
    out.print(table)


def _ratio(ratio: Decimal | None) -> str:
    return f"{ratio:.2f}" if ratio is not None else "-"


def costs(
    batch: Annotated[str | None, typer.Option(help="only this batch")] = None,
    since: Annotated[
        dt.datetime | None,
        typer.Option(formats=["%Y-%m-%d"], help="first UTC day (default: all days)"),
    ] = None,
    by: Annotated[
        list[str] | None,
        typer.Option(
            help="group by model, priority, role, day, batch, route (sync or batch) or "
            "metadata.KEY (a key of the "
            "jobs' metadata; without it: (none)); repeat to combine (default: model)"
        ),
    ] = None,
    compare: Annotated[
        bool, typer.Option("--compare", help="price the same usage on every model; project a year")
    ] = False,
    chart: Annotated[
        Path | None, typer.Option(help="draw a PNG: cost per day by model (+ the comparison)")
    ] = None,
    athena: Annotated[
        bool,
        typer.Option(
            "--athena",
            help="add the records up with Athena in the stack's workgroup (one query instead "
            "of one S3 read per job: for large volumes)",
        ),
    ] = False,
    threads: ThreadsOpt = 16,
    stack: StackOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Cost totals from the cost records (one per finished job), grouped, compared, charted."""
    try:
        grouping = Grouping.parse(by or [])
    except BadGrouping as err:
        raise CliError(str(err), EXIT_USAGE) from None
    cfg = load_config(config)
    deployment = connect(cfg, stack)
    day = since.date() if since else None
    query: AthenaQuery | None = None
    if athena:
        report, query = _athena_report(deployment, grouping, day, batch, as_json, cfg.models)
    else:
        with progress_bar(as_json, TextColumn("{task.completed} records")) as progress:
            task = progress.add_task("reading cost records", total=None)
            report = load_report(
                deployment.s3,
                deployment.resources.bucket,
                since=day,
                batch=batch,
                by=grouping,
                threads=threads,
                on_record=lambda _: progress.advance(task),
                batches=deployment.batches,
                prices=cfg.models,
            )
    if batch and not report.total.jobs and deployment.batches.get(batch) is None:
        find_batch(deployment, batch)  # raises: unknown batch
    comparison = report.compare(cfg) if compare else None
    if chart:
        draw_chart(report, comparison or [], chart)
    result = _costs_output(report, batch, comparison, chart)
    if query is not None:
        result.athena_query_id = query.query_id
        result.athena_scanned_bytes = query.scanned_bytes
    if as_json:
        emit(result)
        return
    _costs_tables(result)
    if query is not None:
        console.print(
            f"added up by Athena: query {query.query_id}, "
            f"{query.scanned_bytes / 1e6:,.1f} MB scanned",
            highlight=False,
        )
    if chart:
        console.print(f"chart written to {chart}", highlight=False)


def _athena_report(
    deployment: Deployment,
    grouping: Grouping,
    since: dt.date | None,
    batch: str | None,
    as_json: bool,
    prices: dict[str, Model],
) -> tuple[CostReport, AthenaQuery]:
    """The report added up by Athena in the stack's workgroup, its state shown meanwhile."""
    with progress_bar(as_json, TextColumn("{task.fields[state]}")) as progress:
        task = progress.add_task("Athena query", total=None, state="starting")
        try:
            return athena_report(
                deployment.aws.client("athena"),
                deployment.stack,
                grouping,
                since=since,
                batch=batch,
                on_state=lambda state: progress.update(task, state=state.lower()),
                prices=prices,
            )
        except AthenaError as err:
            raise CliError(str(err)) from None
