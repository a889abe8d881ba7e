"""The options and arguments the commands share (--config, --stack, --json, BATCH,
--threads, --route) and the lookup of a BATCH id in the deployment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from chatbatch.cli.errors import EXIT_USAGE, CliError
from chatbatch.client.deployment import Deployment
from chatbatch.core.routing import Override
from chatbatch.state.batches import BatchInfo

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
RouteOpt = Annotated[
    str,
    typer.Option(
        "--route",
        help="sync: every job synchronously; batch: every job through its provider's "
        "batch API; auto: a job whose deadline_h is 24 h or more, on a model with a "
        "batch_api, goes to batch (`submit --dry-run` shows the split and each route's cost)",
    ),
]


def route_override(value: str) -> Override:
    """``--route``'s value, checked (a usage error names the choices)."""
    if value not in ("sync", "batch", "auto"):
        raise CliError(f"--route {value!r}: use sync, batch or auto", EXIT_USAGE)
    return value  # type: ignore[return-value]


def find_batch(deployment: Deployment, batch_id: str) -> BatchInfo:
    info = deployment.batches.get(batch_id)
    if info is None:
        raise CliError(
            f"batch {batch_id!r} not found in stack {deployment.stack!r}: check the id "
            "(`chatbatch submit` printed it)"
        )
    return info
