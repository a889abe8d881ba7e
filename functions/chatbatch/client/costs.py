"""Cost reports from the cost records in S3 (``costs/dt=YYYY-MM-DD/<batch>/<flush>.jsonl``,
a record a line, ``client/flush_objects.py``).

``chatbatch costs`` reads the records of the days asked for (one ``CostRecord`` per
finished job, and one per call whose answer was never read, booked at its worst case:
``usage_estimated``; a job's record found twice, an orphan beside it, counts once), adds
them up exactly (``Decimal``), groups them, re-prices the same token
usage on every model of the price table and projects a year at the current daily rate:
``total / days covered * 365``, where the days covered run from ``--since`` (else the
first day with a record) to the last day with a record.

Cache hits (``cached``) cost nothing whichever model would have answered, so the
comparison re-prices only the usage a provider billed.

What the batch route saved (``saved_usd``) is, over the billed records whose ``route`` is
``batch``, the same tokens at the model's synchronous prices minus what was paid (the
records' cost, at the batch prices). The synchronous price of a usage is exact and linear
in its tokens, so it is computed on any sum of records (one record, or a row of Athena's
answer, one route and model each) and the two readers agree to the nanodollar. A record
written before ``route`` existed is ``sync``; a batch record whose model is no longer in
the price table cannot be re-priced and is named (``CostReport.unpriced``), not guessed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from chatbatch.client.cost_groups import Grouping, GroupKey
from chatbatch.client.flush_objects import CostLines
from chatbatch.client.listing import in_order, list_keys
from chatbatch.core.config import Config, Model
from chatbatch.core.output_lines import CostRecord
from chatbatch.core.pricing import Usage, cost
from chatbatch.core.private_files import private_open
from chatbatch.state.batches import Batches
from chatbatch.state.store import object_lines

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from mypy_boto3_s3 import S3Client

COSTS_PREFIX = "costs/"
DAYS_PER_YEAR = 365


class Totals(BaseModel):
    """What a set of cost records adds up to."""

    jobs: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    # calls booked at their worst case (no usage came back), in the figures above too
    estimated_calls: int = 0
    estimated_usd: Decimal = Decimal(0)
    # of the figures above, the records of the batch route (what they paid: batch prices)
    batch_jobs: int = 0
    batch_usd: Decimal = Decimal(0)
    # the billed batch records' tokens at their model's synchronous prices, minus batch_usd
    saved_usd: Decimal = Decimal(0)

    @classmethod
    def of(cls, record: CostRecord) -> Totals:
        """One record's figures."""
        return cls(
            jobs=1 if record.attempt is None else 0,  # an unread call has its own record too
            prompt_tokens=record.prompt_tokens,
            cached_tokens=record.cached_tokens,
            cache_write_tokens=record.cache_write_tokens,
            cache_write_1h_tokens=record.cache_write_1h_tokens,
            completion_tokens=record.completion_tokens,
            cost_usd=record.cost_usd,
            estimated_calls=1 if record.usage_estimated else 0,
            estimated_usd=record.cost_usd if record.usage_estimated else Decimal(0),
        )

    def add(self, other: Totals) -> None:
        """Add ``other``'s figures to these."""
        for name in Totals.model_fields:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens,
            cached_tokens=self.cached_tokens,
            cache_write_tokens=self.cache_write_tokens,
            cache_write_1h_tokens=self.cache_write_1h_tokens,
            completion_tokens=self.completion_tokens,
        )


class Comparison(BaseModel):
    """The billed usage priced on one model of the price table."""

    model: str
    cost_usd: Decimal
    annual_usd: Decimal
    ratio: Decimal | None = Field(description="this model's cost / the actual cost")
    # the same usage at the model's batch prices (None: the model has no batch_api)
    batch_cost_usd: Decimal | None = None
    batch_annual_usd: Decimal | None = None
    batch_ratio: Decimal | None = None


class CostReport(BaseModel):
    since: dt.date | None = None
    by: Grouping = Field(default_factory=Grouping)
    total: Totals = Field(default_factory=Totals)
    billed: Totals = Field(default_factory=Totals, description="records not from the cache")
    groups: dict[GroupKey, Totals] = Field(default_factory=dict)
    daily: dict[str, dict[str, Decimal]] = Field(
        default_factory=dict, description="day -> model -> USD"
    )
    prices: dict[str, Model] = Field(
        default_factory=dict, description="the price table (config.models): what saved_usd uses"
    )
    unpriced: set[str] = Field(
        default_factory=set, description="models of batch records not in the price table"
    )

    def add(self, record: CostRecord) -> None:
        self.add_totals(
            self.by.group_of(record),
            record.dt,
            record.model,
            record.cached,
            Totals.of(record),
            record.route,
        )

    def add_totals(
        self,
        group: GroupKey,
        day: str,
        model: str,
        cached: bool,
        totals: Totals,
        route: str = "sync",
    ) -> None:
        """Records of one group, day, model, cache flag and route, added up (one record, or
        a row of Athena's answer)."""
        if route == "batch":
            totals = totals.model_copy(update=self._batch_figures(model, cached, totals))
        self.total.add(totals)
        if not cached:
            self.billed.add(totals)
        self.groups.setdefault(group, Totals()).add(totals)
        per_model = self.daily.setdefault(day, {})
        per_model[model] = per_model.get(model, Decimal(0)) + totals.cost_usd

    def _batch_figures(self, model: str, cached: bool, totals: Totals) -> dict[str, object]:
        """Batch-route records' own figures: what they paid and, billed (a cache hit costs
        nothing on either route), what their tokens would have cost synchronously beyond
        it."""
        figures: dict[str, object] = {"batch_jobs": totals.jobs, "batch_usd": totals.cost_usd}
        if cached:
            return figures
        sync = self.prices.get(model)
        if sync is None:
            self.unpriced.add(model)
            return figures
        return figures | {"saved_usd": cost(totals.usage, sync) - totals.cost_usd}

    @property
    def days(self) -> int:
        """Days covered: from ``since`` (or the first record's day) to the last record's."""
        if not self.daily:
            return 0
        first = self.since or dt.date.fromisoformat(min(self.daily))
        last = dt.date.fromisoformat(max(self.daily))
        return max(1, (last - first).days + 1)

    def annual(self, usd: Decimal) -> Decimal:
        """``usd`` spent over the days covered, projected to a year at the same daily rate."""
        return usd / self.days * DAYS_PER_YEAR if self.days else Decimal(0)

    def compare(self, config: Config) -> list[Comparison]:
        """The billed token usage priced on every model, cheapest first; a model with a
        batch API also at its batch prices."""
        usage = self.billed.usage
        actual = self.billed.cost_usd

        def ratio(usd: Decimal) -> Decimal | None:
            return usd / actual if actual else None

        rows = []
        for name, model in config.models.items():
            usd = cost(usage, model)
            row = Comparison(
                model=name, cost_usd=usd, annual_usd=self.annual(usd), ratio=ratio(usd)
            )
            if model.batch_api is not None:
                batch = cost(usage, model.batch_priced())
                row.batch_cost_usd = batch
                row.batch_annual_usd = self.annual(batch)
                row.batch_ratio = ratio(batch)
            rows.append(row)
        return sorted(rows, key=lambda row: row.cost_usd)


def cost_days(s3: S3Client, bucket: str, since: dt.date | None = None) -> list[str]:
    """The days (``YYYY-MM-DD``) that have cost records, from ``since`` on."""
    days = []
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=f"{COSTS_PREFIX}dt=", Delimiter="/"
    )
    for page in pages:
        for common in page.get("CommonPrefixes", []):
            day = common["Prefix"].removeprefix(f"{COSTS_PREFIX}dt=").rstrip("/")
            if since is None or day >= since.isoformat():
                days.append(day)
    return sorted(days)


def cost_keys(s3: S3Client, bucket: str, days: Iterable[str], batch: str | None) -> Iterator[str]:
    for day in days:
        prefix = f"{COSTS_PREFIX}dt={day}/" + (f"{batch}/" if batch else "")
        yield from list_keys(s3, bucket, prefix)


def load_report(
    s3: S3Client,
    bucket: str,
    *,
    since: dt.date | None = None,
    batch: str | None = None,
    by: Grouping | None = None,
    threads: int = 16,
    on_record: Callable[[CostRecord], None] = lambda record: None,
    batches: Batches | None = None,
    prices: dict[str, Model] | None = None,
) -> CostReport:
    """Read and add up the cost records of the days from ``since`` (of one batch, or all).
    A job's record found in two objects counts once, the one its state item names
    (``batches``: the deployment's job states, needed only then). ``on_record``: each
    record as it counts. ``prices``: the price table the batch route's saving is
    reckoned at (``config.models``)."""
    report = CostReport(since=since, by=by or Grouping(), prices=prices or {})

    def read(key: str) -> tuple[str, list[str]]:
        return key, object_lines(s3.get_object(Bucket=bucket, Key=key)["Body"].read())

    def count(text: str) -> None:
        record = CostRecord.model_validate_json(text)
        report.add(record)
        on_record(record)

    lines = CostLines()
    keys = cost_keys(s3, bucket, cost_days(s3, bucket, since), batch)
    for key, texts in in_order(keys, read, threads):
        for text in texts:
            if (now := lines.add(key, text)) is not None:
                count(now)
    for text in lines.resolved(batches):
        count(text)
    return report


def draw_chart(report: CostReport, comparison: list[Comparison], path: Path) -> None:
    """A PNG: cost per day by model (stacked bars) and, with a comparison, the same usage
    priced on every model with its annual projection."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if comparison else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.5), squeeze=False)
    _daily_bars(axes[0][0], report)
    if comparison:
        _comparison_bars(axes[0][1], report, comparison)
    fig.tight_layout()
    with private_open(path, "wb") as png:
        fig.savefig(png, format="png", dpi=100)
    plt.close(fig)


def _daily_bars(ax: Axes, report: CostReport) -> None:
    days = sorted(report.daily)
    models = sorted({m for per_model in report.daily.values() for m in per_model})
    bottom = [0.0] * len(days)
    for model in models:
        heights = [float(report.daily[d].get(model, 0)) for d in days]
        ax.bar(days, heights, bottom=bottom, label=model)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.set_title("cost per day by model (USD)")
    ax.tick_params(axis="x", labelrotation=45)
    if models:
        ax.legend()


def _comparison_bars(ax: Axes, report: CostReport, comparison: list[Comparison]) -> None:
    names = [row.model for row in comparison]
    values = [float(row.cost_usd) for row in comparison]
    bars = ax.barh(names, values)
    labels = [f"{_money(row.cost_usd)}  ({_money(row.annual_usd)}/yr)" for row in comparison]
    ax.bar_label(bars, labels=labels, padding=3, fontsize=8)
    actual = f"actual {_money(report.total.cost_usd)} over {report.days} day(s)"
    ax.set_title(f"the same usage on every model ({actual})")
    ax.margins(x=0.6)


def _money(usd: Decimal) -> str:
    """USD for a chart label (``\\$``: a bare ``$`` starts matplotlib's math mode)."""
    return f"\\${usd:,.2f}" if usd >= 1 else f"\\${usd:,.4f}"
