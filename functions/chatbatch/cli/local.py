"""``chatbatch local run | up | simulator``: the whole pipeline on this machine (moto for
AWS, the provider simulator or a real API URL for the chat API); see ``chatbatch.local``.

``chatbatch.local`` is imported inside the commands, so the other commands never load
moto or the simulator.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import BaseModel
from rich.table import Table

from chatbatch.cli.errors import EXIT_USAGE, CliError
from chatbatch.cli.output import console, emit, out, progress_bar
from chatbatch.cli.params import ConfigOpt, RouteOpt, route_override
from chatbatch.core.config import Priority
from chatbatch.state.batches import BatchInfo, SubmittedFromAnotherFile

if TYPE_CHECKING:
    from chatbatch.local.runtime import Interrupted, LocalRuntime
    from chatbatch.local.summary import Summary

EXIT_INTERRUPTED = 130  # what a shell reports for a command ended by Ctrl-C

ProviderUrlOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--provider-url",
        metavar="[NAME=]URL",
        help="a real OpenAI-compatible /v1 URL instead of the simulator: URL sends every "
        "model there with the key in CHATBATCH_API_KEY; NAME=URL sends provider NAME's "
        "models there with the key in its own api_key_env (repeatable; providers named "
        "nowhere go to the bare URL, else to their configured base_url)",
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
StateOpt = Annotated[
    Path | None,
    typer.Option(
        "--state",
        help="directory of the local state (the journal of every write; default for "
        "`local run`: OUT/.state); the same command again resumes from it",
    ),
]


def _local_options(
    *,
    sim_latency_ms: float,
    sim_faults: str | None,
    seed: int,
    budget_usd: float | None,
    sim_rpm: int | None = None,
    sim_tpm: int | None = None,
    sim_batch_turnaround_s: float = 1.0,
    **options: Any,
) -> Any:
    from chatbatch.local.options import LocalOptions
    from chatbatch.local.simulator import SimulatorSettings

    try:
        faults = json.loads(sim_faults) if sim_faults else {}
        settings = SimulatorSettings(
            latency_ms=sim_latency_ms,
            rpm=sim_rpm,
            tpm=sim_tpm,
            fault_rates=faults,
            seed=seed,
            batch_turnaround_s=sim_batch_turnaround_s,
        )
    except ValueError as err:
        raise CliError(f"--sim-*: {err}", EXIT_USAGE) from None
    budget = Decimal(str(budget_usd)) if budget_usd is not None else None
    return LocalOptions(seed=seed, simulator=settings, budget_usd=budget, **options)


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
    state: StateOpt = None,
    throttle_wcu_s: Annotated[
        float | None,
        typer.Option(
            "--throttle-wcu-s",
            help="write units a second each DynamoDB item takes; past it, writes are refused "
            "as DynamoDB refuses a hot key (default: no limit)",
        ),
    ] = None,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="delete the state (and so the answers) and start over")
    ] = False,
    route: RouteOpt = "auto",
    gather_every_s: Annotated[
        float,
        typer.Option(
            "--gather-every-s",
            min=0.1,
            help="the batch route's gatherer runs this often (deployed: every 5 minutes)",
        ),
    ] = 5.0,
    sim_batch_turnaround_s: Annotated[
        float,
        typer.Option(
            "--sim-batch-turnaround-s",
            min=0.0,
            help="the simulator's provider batches answer their last line this long after "
            "they start (the providers: minutes to 24 h)",
        ),
    ] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="print summary.json")] = False,
) -> None:
    """Run JOBS through the local pipeline; write results, errors, costs and a summary to --out.

    Outputs: OUT/results.jsonl (input order), OUT/errors.jsonl (none for a file of
    Anthropic lines: every line in results.jsonl, as Anthropic's), OUT/costs.jsonl,
    OUT/summary.json, and the worker's JSON logs in OUT/worker.log. Answers are appended as
    they finish; Ctrl-C stops (exit 130) and the same command again resumes: jobs already
    answered are neither sent nor paid again.
    """
    from chatbatch.local.journal.state_dir import StateError
    from chatbatch.local.runtime import Interrupted, LocalRuntime

    override = route_override(route)
    if not jobs.is_file():
        raise CliError(f"{jobs}: no such file; give the path of a JSONL jobs file", EXIT_USAGE)
    state_dir = state or out_dir / ".state"
    if fresh:
        shutil.rmtree(state_dir, ignore_errors=True)
    options = _local_options(
        config_path=config,
        provider_urls=provider_url or (),
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
        state_dir=state_dir,
        throttle_wcu_s=throttle_wcu_s,
        gather_every_s=gather_every_s,
        sim_batch_turnaround_s=sim_batch_turnaround_s,
    )
    try:
        with LocalRuntime(options) as runtime, _on_stop_signals(runtime.request_stop):
            _say_resumed(runtime, state_dir)
            with progress_bar(as_json) as progress:
                task = progress.add_task("jobs", total=None)

                def show(info: BatchInfo, total: int) -> None:
                    progress.update(task, total=total, completed=info.finished + info.deferred)

                summary = runtime.run(jobs, out_dir, on_progress=show, route=override)
    except StateError as err:
        raise CliError(str(err)) from None
    except SubmittedFromAnotherFile as err:
        raise CliError(
            f"{state_dir} holds the run of another file (checksum {err.registered[:12]}, this "
            f"file {err.checksum[:12]}): give another --out (or --state), or start over with "
            "--fresh (which deletes its answers)"
        ) from None
    except Interrupted as stopped:
        _show_summary(stopped.summary, jobs, out_dir, as_json)
        _say_how_to_resume(stopped, out_dir)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    _show_summary(summary, jobs, out_dir, as_json)


def _show_summary(summary: Summary, jobs: Path, out_dir: Path, as_json: bool) -> None:
    if as_json:
        emit(summary)
        return
    table = Table(title=f"chatbatch local run: {jobs} -> {out_dir}/")
    table.add_column("", style="bold")
    table.add_column("value", justify="right")
    for key, value in summary.model_dump(exclude={"aws_requests"}).items():
        table.add_row(key, str(value))
    out.print(table)


def _say_resumed(runtime: LocalRuntime, state_dir: Path | None) -> None:
    replayed = runtime.replayed
    if replayed.resumed:
        console.print(
            f"resuming from {state_dir}: {replayed.writes} writes replayed, "
            f"{sum(replayed.resent.values())} message(s) back in the queues "
            f"({replayed.seconds:.1f} s)",
            highlight=False,
            soft_wrap=True,
        )


def _say_how_to_resume(stopped: Interrupted, out_dir: Path) -> None:
    summary = stopped.summary
    again = " ".join(["chatbatch", *(shlex.quote(a) for a in sys.argv[1:] if a != "--fresh")])
    running = (
        f"; {stopped.running} invocation(s) were still running: their calls are booked at "
        "their worst case and asked again"
        if stopped.running
        else ""
    )
    console.print(
        f"stopped: {summary.succeeded} of {summary.jobs_total} job(s) answered, in "
        f"{out_dir}/results.jsonl{running}. To resume, run the same command again: {again}",
        highlight=False,
        soft_wrap=True,
    )


class LocalUp(BaseModel):
    stack: str
    endpoint: str
    simulator: str | None
    env: dict[str, str]


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
    state: StateOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the endpoint and environment as JSON")
    ] = False,
) -> None:
    """Serve the local pipeline to other terminals until Ctrl-C.

    moto's server stands in for AWS, the simulator for the chat API, and emulated Lambda
    workers consume the queues. The config's stack is registered in moto, so every other
    command finds it once the printed environment is exported. With --state DIR the state
    is kept there: started again with the same DIR, it carries on its batches.
    """
    from chatbatch.local.journal.state_dir import StateError

    options = _local_options(
        config_path=config,
        provider_urls=provider_url or (),
        rpm=rpm,
        tpm=tpm,
        budget_usd=budget_usd,
        concurrency=concurrency,
        seed=seed,
        sim_latency_ms=sim_latency_ms,
        sim_faults=sim_faults,
        server=True,
        port=port,
        state_dir=state,
        log_stderr=as_json,  # stdout holds the JSON line alone
    )
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    try:
        _serve(options, config, as_json)
    except StateError as err:
        raise CliError(str(err)) from None
    kept = f"; its state is kept in {state}: `chatbatch local up --state {state}` carries on"
    console.print(f"stopped{kept if state else '; the local state is gone with it'}")


def _serve(options: Any, config: Path | None, as_json: bool) -> None:
    from chatbatch.local.aws import FAKE_CREDENTIALS
    from chatbatch.local.runtime import LocalRuntime

    with LocalRuntime(options) as runtime:
        _say_resumed(runtime, options.state_dir)
        runtime.register_stack()
        # both region variables: boto3 and the AWS CLI read AWS_DEFAULT_REGION, other SDKs
        # (JavaScript, Go, Java) AWS_REGION
        env = {"AWS_ENDPOINT_URL": runtime.endpoint or ""} | FAKE_CREDENTIALS
        up = LocalUp(
            stack=runtime.config.stack_name,
            endpoint=runtime.endpoint or "",
            simulator=runtime.simulator.base_url if runtime.simulator else None,
            env=env,
        )
        _announce(up, config, as_json, options.state_dir)
        _wait_for_stop()


@contextmanager
def _on_stop_signals(handle: Callable[[], None]) -> Iterator[None]:
    """Ctrl-C and SIGTERM call ``handle`` instead of ending the process (also when started
    in the background, where a shell may have set SIGINT to be ignored)."""
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda *_: handle()) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wait_for_stop() -> None:
    """Block until Ctrl-C or SIGTERM."""
    stop = threading.Event()
    with _on_stop_signals(stop.set):
        stop.wait()


def _announce(up: LocalUp, config: Path | None, as_json: bool, state: Path | None) -> None:
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
    kept = (
        f"its state is kept in {state}" if state else "its state lives in memory and goes with it"
    )
    console.print(
        f"then e.g. `chatbatch submit jobs.jsonl{option}` and `chatbatch status{option}`. "
        f"Ctrl-C stops it ({kept}).",
        highlight=False,
        soft_wrap=True,
    )


def local_simulator(ctx: typer.Context) -> None:
    """Run the provider simulator (an OpenAI-compatible chat API) in the foreground.

    Options: --port N (0: any free), --host, --api-key, --model ID, --rpm, --tpm, --per-second,
    --latency-ms, --per-token-ms, --answer-tokens, --seed, --fault KIND=RATE, --hang-s,
    --outage-at-s, --outage-s (`chatbatch local simulator --help` lists them).
    """
    from chatbatch.local.simulator import parse_args, serve

    settings, host, port = parse_args(ctx.args)
    serve(settings, host, port)
