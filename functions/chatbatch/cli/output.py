"""Where the CLI writes, and how it formats: results on stdout (``out``, ``say``, ``emit``),
progress bars, warnings and errors on stderr (``console``); USD amounts and durations."""

from __future__ import annotations

from decimal import Decimal

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

console = Console(stderr=True)  # progress, warnings, errors
out = Console()  # results


def error(message: str) -> None:
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True, highlight=False)


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True)


def say(message: str) -> None:
    """A one-line message on stdout (never wrapped: commands in it stay copyable)."""
    out.print(message, soft_wrap=True, highlight=False)


def emit(data: BaseModel) -> None:
    typer.echo(data.model_dump_json(indent=2))


def usd(value: Decimal) -> str:
    return f"${value:,.4f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def progress_bar(disabled: bool, *columns: ProgressColumn) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        *(columns or (MofNCompleteColumn(),)),
        TimeElapsedColumn(),
        console=console,
        disable=disabled,
        transient=False,
    )
