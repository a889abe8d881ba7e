"""The options and arguments the commands share (--config, --stack, --json, BATCH,
--threads) and the lookup of a BATCH id in the deployment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from chatbatch.cli.errors import CliError
from chatbatch.client.deployment import Deployment
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


def find_batch(deployment: Deployment, batch_id: str) -> BatchInfo:
    info = deployment.batches.get(batch_id)
    if info is None:
        raise CliError(
            f"batch {batch_id!r} not found in stack {deployment.stack!r}: check the id "
            "(`chatbatch submit` printed it)"
        )
    return info
