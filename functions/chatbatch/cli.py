"""The `chatbatch` command (not shipped in the Lambda asset)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from chatbatch.batches import BatchInfo
from chatbatch.config import ConfigError, Priority

app = typer.Typer(
    help="Push large volumes of chat-completion jobs through OpenAI-compatible APIs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
local = typer.Typer(help="Run the whole pipeline on this machine (moto + provider simulator).")
app.add_typer(local, name="local")
console = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="chatbatch.toml (default: ./chatbatch.toml)")
]


def fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


@local.command("run")
def local_run(
    jobs: Annotated[Path, typer.Argument(help="JSONL file of jobs")],
    out: Annotated[Path, typer.Option("--out", help="directory for the outputs")] = Path("out"),
    provider_url: Annotated[
        str | None,
        typer.Option(
            help="a real OpenAI-compatible /v1 URL instead of the simulator "
            "(key from CHATBATCH_API_KEY, else OPENAI_API_KEY)"
        ),
    ] = None,
    rpm: Annotated[int | None, typer.Option(help="requests/min for every model")] = None,
    tpm: Annotated[int | None, typer.Option(help="tokens/min for every model")] = None,
    budget_usd: Annotated[float | None, typer.Option(help="daily budget in USD")] = None,
    priority: Annotated[
        Priority | None, typer.Option(help="priority of lines that name none")
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="max concurrent workers per priority")
    ] = None,
    config: ConfigOpt = None,
    seed: Annotated[int, typer.Option(help="seed of the simulator's faults")] = 0,
    sim_latency_ms: Annotated[float, typer.Option(help="simulator latency")] = 0.0,
    sim_rpm: Annotated[int | None, typer.Option(help="simulator's own requests/min")] = None,
    sim_tpm: Annotated[int | None, typer.Option(help="simulator's own tokens/min")] = None,
    sim_faults: Annotated[
        str | None,
        typer.Option(help='simulator fault rates as JSON, e.g. \'{"500": 0.05, "reset": 0.02}\''),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print summary.json")] = False,
) -> None:
    """Run JOBS through the local pipeline; write results, errors, costs and a summary to --out.

    Outputs: OUT/results.jsonl (input order), OUT/errors.jsonl, OUT/costs.jsonl,
    OUT/summary.json.
    """
    from chatbatch.local.runtime import LocalOptions, LocalRuntime
    from chatbatch.local.simulator import SimulatorSettings

    if not jobs.is_file():
        raise fail(f"{jobs}: no such file; give the path of a JSONL jobs file", 2)
    try:
        faults = json.loads(sim_faults) if sim_faults else {}
        settings = SimulatorSettings(
            latency_ms=sim_latency_ms, rpm=sim_rpm, tpm=sim_tpm, fault_rates=faults, seed=seed
        )
    except ValueError as err:
        raise fail(f"--sim-*: {err}", 2) from None
    options = LocalOptions(
        config_path=config,
        provider_url=provider_url,
        rpm=rpm,
        tpm=tpm,
        budget_usd=Decimal(str(budget_usd)) if budget_usd is not None else None,
        priority=priority,
        concurrency=concurrency,
        seed=seed,
        simulator=settings,
    )
    try:
        runtime = LocalRuntime(options)
    except ConfigError as err:
        raise fail(str(err), 2) from None
    with runtime, _progress(as_json) as progress:
        task = progress.add_task("jobs", total=None)

        def show(info: BatchInfo, total: int) -> None:
            progress.update(task, total=total, completed=info.finished + info.deferred)

        summary = runtime.run(jobs, out, on_progress=show)
    if as_json:
        typer.echo(summary.model_dump_json(indent=2))
        return
    table = Table(title=f"chatbatch local run: {jobs} -> {out}/")
    table.add_column("", style="bold")
    table.add_column("value", justify="right")
    for key, value in summary.model_dump(exclude={"aws_requests"}).items():
        table.add_row(key, str(value))
    Console().print(table)


def _progress(disabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=disabled,
        transient=False,
    )


def main() -> None:
    app()
