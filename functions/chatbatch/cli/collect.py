"""``chatbatch collect``: a batch's results and errors, OpenAI Batch output lines in input
order when the batch has a manifest, streamed to two files (or stdout): answers and the
provider's HTTP error answers to the results file, failures that never got an HTTP answer
to the error file (``results.jsonl`` → ``results.errors.jsonl`` unless ``--errors``). A
batch submitted as Anthropic Message Batches lines is written as Anthropic's results
lines, all in the one results file (as Anthropic's; ``--errors`` is not used).
``--wait`` first waits until every job is final (``chatbatch.client.wait``).

The results are read in one pass over the batch's results objects (a few jobs' lines
each: ``client/flush_objects.py``), never a GET per job; a job's orphan line (a copy
whose final transaction lost) is dropped. Error records stay one object per job."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Annotated, Literal

import typer
from pydantic import BaseModel

from chatbatch.cli.errors import EXIT_INCOMPLETE, EXIT_USAGE, CliError
from chatbatch.cli.output import console, emit, progress_bar, warn
from chatbatch.cli.params import BatchArg, ConfigOpt, JsonOpt, StackOpt, ThreadsOpt, find_batch
from chatbatch.client.deployment import Deployment, connect
from chatbatch.client.flush_objects import ResultIndex, index_results
from chatbatch.client.listing import in_order, list_keys
from chatbatch.client.wait import NoTotal, wait_until_complete
from chatbatch.core.config import load_config
from chatbatch.core.jobs import id_key
from chatbatch.core.output_lines import OutputLine
from chatbatch.core.private_files import private_open
from chatbatch.state.batches import BatchInfo
from chatbatch.state.store import error_key, errors_prefix, manifest_key
from chatbatch.translate.batch_results import written


class CollectReport(BaseModel):
    batch_id: str
    output: str
    errors_file: str | None
    source: Literal["manifest", "listing"]
    results: int = 0
    errors: int = 0
    unfinished: int = 0


Outcome = tuple[str | None, bool]  # (the stored line or None if unfinished, is a result)


def _error_record(text: str | None) -> Outcome:
    """A stored error record: a result when it carries the provider's HTTP answer."""
    return text, text is not None and OutputLine.model_validate_json(text).is_result


def errors_path(output: Path) -> Path | None:
    """Where the error lines go when ``--errors`` is not given: beside the results
    (``results.jsonl`` → ``results.errors.jsonl``); None (with the results) for stdout."""
    if str(output) == "-":
        return None
    return output.with_name(f"{output.stem}.errors{output.suffix or '.jsonl'}")


def _manifest(deployment: Deployment, batch_id: str) -> Iterator[str] | None:
    """The batch's custom_ids in input order, streamed; None if it has no manifest."""
    s3 = deployment.s3
    try:
        body = s3.get_object(Bucket=deployment.resources.bucket, Key=manifest_key(batch_id))
    except s3.exceptions.NoSuchKey:
        return None
    return (json.loads(line) for line in body["Body"].iter_lines() if line.strip())


def _outcomes_by_manifest(
    deployment: Deployment, index: ResultIndex, batch_id: str, ids: Iterable[str], threads: int
) -> Iterator[Outcome]:
    """In the manifest's order: each job's committed result (through the index, objects
    read through its cache), else its error record (a GET per job)."""
    store = deployment.store

    def outcome(custom_id: str) -> Outcome:
        text = index.result(custom_id)
        if text is not None:
            return text, True
        return _error_record(store.get_text(error_key(batch_id, custom_id)))

    return in_order(ids, outcome, threads)


def _outcomes_by_listing(
    deployment: Deployment, index: ResultIndex, batch_id: str, threads: int
) -> Iterator[Outcome]:
    """Jobs from other producers (no manifest): results, then errors of jobs without one."""
    s3, bucket, store = deployment.s3, deployment.resources.bucket, deployment.store
    succeeded = {id_key(custom_id) for custom_id in index.where}

    def errors() -> Iterator[str]:
        for key in list_keys(s3, bucket, errors_prefix(batch_id)):
            if key.rsplit("/", 1)[-1].removesuffix(".json") not in succeeded:
                yield key

    for text in index.in_listing_order():
        yield text, True
    for error in in_order(errors(), store.get_text, threads):
        yield _error_record(error)


@contextmanager
def _writer(path: Path | None, fallback: IO[str] | None = None) -> Iterator[IO[str]]:
    if path is None and fallback is not None:
        yield fallback
    elif path is None or str(path) == "-":
        yield typer.get_text_stream("stdout")
    else:
        with private_open(path) as handle:
            yield handle


def collect(
    batch: BatchArg,
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="results JSONL: answers and provider HTTP errors ('-': stdout)"
        ),
    ] = Path("results.jsonl"),
    errors: Annotated[
        Path | None,
        typer.Option(
            "--errors",
            "-e",
            help="error JSONL: failures without an HTTP answer (default: OUTPUT's name "
            "with .errors before its suffix, e.g. results.errors.jsonl; with '-o -': "
            "stdout; '-': stdout; a batch of Anthropic lines has none: one results file)",
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="first wait until every job of the batch is final (its counters polled "
            "with backoff, progress on stderr), then collect",
        ),
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            min=0,
            help="with --wait: stop waiting after this many seconds and collect what is "
            "there (exit code 3 if jobs are unfinished)",
        ),
    ] = None,
    threads: ThreadsOpt = 16,
    stack: StackOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a batch's results and errors (OpenAI Batch output lines) in input order, as
    they are read: answers and the provider's HTTP error answers to OUTPUT, failures that
    never got an HTTP answer to the error file.

    Exit code 3 when some jobs have not finished yet (run collect again later, or use
    --wait).
    """
    if timeout is not None and not wait:
        raise CliError("--timeout is a limit on --wait: add --wait, or drop --timeout", EXIT_USAGE)
    deployment = connect(load_config(config), stack)
    info = _wait(deployment, batch, timeout) if wait else deployment.batches.get(batch)
    ids = _manifest(deployment, batch)
    if info is None and ids is None:
        find_batch(deployment, batch)  # raises: unknown batch
    form = info.form if info else "openai"
    if form == "anthropic":  # one results file, as Anthropic's
        errors = None
    elif errors is None:
        errors = errors_path(output)
    report = CollectReport(
        batch_id=batch,
        output=str(output),
        errors_file=str(errors) if errors else None,
        source="manifest" if ids is not None else "listing",
    )
    index = index_results(deployment.s3, deployment.store, deployment.batches, batch, threads)
    outcomes = (
        _outcomes_by_manifest(deployment, index, batch, ids, threads)
        if ids is not None
        else _outcomes_by_listing(deployment, index, batch, threads)
    )
    total = info.total if info else None
    with (
        _writer(output) as results,
        _writer(errors, results) as failures,
        progress_bar(as_json or str(output) == "-") as progress,
    ):
        task = progress.add_task("collecting", total=total)
        for stored, is_result in outcomes:
            progress.advance(task)
            if stored is None:
                report.unfinished += 1
                continue
            text, ok = stored, is_result
            if form == "anthropic":
                text, ok = written(form, OutputLine.model_validate_json(stored))
            (results if ok else failures).write(text.rstrip("\n") + "\n")
            report.results += ok
            report.errors += not ok
    if report.source == "listing" and total is not None:
        report.unfinished = max(0, total - report.results - report.errors)
    _finish_collect(report, as_json)


def _wait(deployment: Deployment, batch: str, timeout: float | None) -> BatchInfo:
    """Wait until the batch is complete (or ``timeout``), its progress on stderr."""
    find_batch(deployment, batch)  # an unknown batch: its error now, not after a wait
    shown: list[str] = []

    def show(info: BatchInfo) -> None:
        line = (
            f"waiting for batch {batch}: {info.finished}/{info.total} final "
            f"({info.succeeded} succeeded, {info.failed} failed, {info.dead_lettered} "
            f"dead-lettered, {info.deferred} deferred for budget, {info.paused} paused)"
        )
        if not shown or shown[-1] != line:
            console.print(line, highlight=False, soft_wrap=True)
            shown.append(line)

    try:
        info, complete = wait_until_complete(
            deployment.batches, batch, timeout_s=timeout, on_poll=show
        )
    except NoTotal as err:
        raise CliError(str(err), EXIT_USAGE) from None
    if not complete:
        left = info.unfinished or 0
        warn(
            f"gave up waiting after {timeout:g} s: {left} job(s) of batch {batch} are not "
            "final; collecting what is there"
        )
    return info


def _finish_collect(report: CollectReport, as_json: bool) -> None:
    if as_json:
        emit(report)
    else:
        where = f" and {report.errors_file}" if report.errors_file else ""
        console.print(
            f"{report.results} results and {report.errors} errors written to "
            f"{report.output}{where}",
            highlight=False,
            soft_wrap=True,
        )
    if report.unfinished:
        warn(
            f"{report.unfinished} job(s) of batch {report.batch_id} have not finished yet "
            "(queued, running or deferred): run collect again later"
        )
        raise typer.Exit(EXIT_INCOMPLETE)
