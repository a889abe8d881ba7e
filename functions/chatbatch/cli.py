"""The `chatbatch` command (not shipped in the Lambda asset)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Push large volumes of chat-completion jobs through OpenAI-compatible APIs.")
local = typer.Typer(help="Run the whole pipeline on this machine (moto + provider simulator).")
app.add_typer(local, name="local")


@local.command("run")
def local_run(
    jobs: Annotated[Path, typer.Argument(help="JSONL file of jobs")],
    out: Annotated[Path, typer.Option("--out", help="directory for results")] = Path("out"),
) -> None:
    """Run JOBS through the local pipeline and write results to --out."""
    typer.echo("chatbatch local run: the local runtime is not built yet (issue 5)", err=True)
    raise typer.Exit(1)


def main() -> None:
    app()
