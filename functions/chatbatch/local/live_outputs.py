"""Answers on disk as they finish: ``results.jsonl``, ``errors.jsonl`` and ``costs.jsonl``
appended while a local run goes on.

``live_outputs`` starts the three files afresh, puts the input's invalid lines in the
error file, then appends each result, error and cost record of the run's batch as the
worker stores it (a ``tap.Listener`` on S3 puts; an error record that carries the
provider's HTTP answer goes to the results file), and adds what the bucket already held
(a resumed run's earlier answers). Each object is written once per run, by its key: a
flush object (``results/<batch>/<flush>.jsonl``, its costs likewise) as its lines, when
first stored; a line a later rewrite of it drops (a copy whose final transaction lost:
rare) stays in the live files until ``outputs`` rewrites them. The
lines reach the kernel as they are appended and are fsync'ed in small groups
(``SyncedAppender``), so a run stopped any way leaves every answer it had stored on disk.
At the end of the run ``outputs`` rewrites the files in input order. A batch of Anthropic
lines has one file of results, every line in Anthropic's results shape.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import boto3

from chatbatch.core.output_lines import OutputLine
from chatbatch.local.journal import backends, tap
from chatbatch.local.journal.appender import SyncedAppender
from chatbatch.local.outputs import is_batch_cost
from chatbatch.state.store import object_lines
from chatbatch.translate import Form
from chatbatch.translate.batch_results import written

FILES = {"results": "results.jsonl", "errors": "errors.jsonl", "costs": "costs.jsonl"}


class LiveOutputs(tap.Listener):
    """Appends the batch's stored results, errors and cost records to the files under
    ``out``, each object once."""

    def __init__(
        self,
        out: Path,
        bucket: str,
        batch_id: str,
        files: dict[str, SyncedAppender],
        form: Form = "openai",
    ):
        self.out = out
        self._bucket = bucket
        self._batch_id = batch_id
        self._files = files
        self._form = form
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def kind(self, key: str) -> str | None:
        """Which file an object of the bucket goes to, if it is the batch's."""
        for kind in ("results", "errors"):
            if key.startswith(f"{kind}/{self._batch_id}/"):
                return kind
        return "costs" if is_batch_cost(key, self._batch_id) else None

    def s3_put(self, bucket: str, key: str, body: bytes) -> None:
        kind = self.kind(key) if bucket == self._bucket else None
        if kind:
            self._add(kind, key, body)

    def add_lines(self, lines: Iterable[OutputLine]) -> None:
        """Append lines to the results or the error file, as the batch's form writes them."""
        for line in lines:
            text, ok = written(self._form, line)
            self._files["results" if ok else "errors"].append(text.encode() + b"\n")

    def backfill(self) -> int:
        """Add the batch's objects the bucket already holds; returns how many were new.
        The bodies are read from moto's S3 itself: through the API, a resumed run's
        answers would cost a GET each."""
        moto_s3 = backends.s3()
        pages = boto3.client("s3").get_paginator("list_objects_v2").paginate
        added = 0
        for prefix in (f"results/{self._batch_id}/", f"errors/{self._batch_id}/", "costs/"):
            for page in pages(Bucket=self._bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    key, kind = obj["Key"], self.kind(obj["Key"])
                    stored = moto_s3.get_object(self._bucket, key) if kind else None
                    if kind and stored is not None and key not in self._seen:
                        added += self._add(kind, key, stored.value)
        return added

    def _add(self, kind: str, key: str, body: bytes) -> bool:
        with self._lock:
            if key in self._seen:
                return False
            self._seen.add(key)
        lines = object_lines(body)  # a flush object holds an invocation's jobs' lines
        if kind == "costs":
            self._files[kind].append(b"".join(f"{line}\n".encode() for line in lines))
        else:  # an error record carrying the provider's HTTP answer goes to the results
            self.add_lines(OutputLine.model_validate_json(line) for line in lines)
        return True


@contextmanager
def live_outputs(
    out: Path, bucket: str, batch_id: str, invalid: Iterable[OutputLine] = (), form: Form = "openai"
) -> Iterator[LiveOutputs]:
    """The batch's files under ``out``, kept current until the block ends; ``invalid``:
    the error lines of the input's invalid lines. An Anthropic-form batch has no error
    file: every line goes to ``results.jsonl``, in Anthropic's results shape."""
    with ExitStack() as stack:
        files = {
            kind: stack.enter_context(SyncedAppender(out / name, truncate=True))
            for kind, name in FILES.items()
            if not (kind == "errors" and form == "anthropic")
        }
        live = LiveOutputs(out, bucket, batch_id, files, form)
        live.add_lines(invalid)
        stack.enter_context(tap.listening(live))
        live.backfill()
        yield live
