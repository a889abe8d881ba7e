"""The `chatbatch` command (not shipped in the Lambda asset).

Every command but ``local`` finds the deployment by its CloudFormation stack's outputs
(``--stack``, default ``stack_name`` in the config; see ``chatbatch.client.deployment``).

Output: tables and summaries on stdout (``--json``: one JSON document instead, one per
refresh with ``status --watch``); progress bars, warnings and errors on stderr. An error is
one line that says what to do, without a traceback unless ``chatbatch --debug``.
Exit codes: 0 done, 1 failed, 2 usage error (bad option or config, missing file),
3 incomplete (``collect``: some jobs have not finished yet).

This module builds the command tree: the typer app, its error handling, and every command
by name, in the order ``--help`` lists them; each command lives in the module of its group
(``submit``, ``status``, ``batches``, ``collect``, ``costs``, ``admin``: cancel, redrive, resume
and retry, ``scale``, ``local``).
"""

from __future__ import annotations

from importlib import metadata
from typing import Annotated, Any

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

import chatbatch
from chatbatch.cli.admin import cancel, redrive, resume, retry
from chatbatch.cli.batches import batches
from chatbatch.cli.budget import budget
from chatbatch.cli.collect import collect
from chatbatch.cli.costs import costs
from chatbatch.cli.errors import explain
from chatbatch.cli.local import local_run, local_simulator, local_up
from chatbatch.cli.output import error
from chatbatch.cli.scale import scale
from chatbatch.cli.status import status
from chatbatch.cli.submit import submit

DEBUG = "chatbatch.debug"


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
app.add_typer(budget, name="budget")

app.command()(submit)
app.command()(status)
app.command()(batches)
app.command()(collect)
app.command()(costs)
app.command()(cancel)
app.command()(redrive)
app.command()(resume)
app.command()(retry)
app.command()(scale)
local.command("run")(local_run)
local.command("up")(local_up)
local.command(
    "simulator",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)(local_simulator)


def installed_version() -> str:
    """The installed distribution's version; the package's own when it is not installed
    (run from a checkout with ``PYTHONPATH``)."""
    try:
        return metadata.version("chatbatch")
    except metadata.PackageNotFoundError:
        return chatbatch.__version__


def _show_version(show: bool) -> None:
    if show:
        typer.echo(f"chatbatch {installed_version()}")
        raise typer.Exit()


@app.callback()
def _options(
    ctx: typer.Context,
    debug: Annotated[
        bool, typer.Option("--debug", envvar="CHATBATCH_DEBUG", help="show tracebacks")
    ] = False,
    _version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_show_version,
            is_eager=True,
            help="print the installed version and exit",
        ),
    ] = False,
) -> None:
    ctx.meta[DEBUG] = debug


def main() -> None:
    app()
