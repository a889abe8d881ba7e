"""S3 objects: results, errors, cost records, the response cache, claim checks, and what
``chatbatch retry`` needs (the request of a failed job, the errors of earlier attempts).

Keys are deterministic, so a retry overwrites instead of duplicating. ``<custom_id>`` is
the job's ``id_key`` (``core.jobs``): the custom_id itself when it is a short plain name,
else ``~`` and its SHA-256, so any custom_id (``task/1``, ``request 1``) makes one key:

- ``results/<batch>/<flush>.jsonl``: the results (OpenAI Batch output lines,
  ``OutputLine``) of the jobs of one worker invocation that finished in the batch, one a
  line, written once per invocation (``worker/finals.py``; ``<flush>``: the invocation's
  flush id). The job's state item names the flush whose line is its result (``flush``):
  a line in another flush's object is an orphan, a copy whose final transaction lost
  (``state/flushed.py`` reads them). ``results/<batch>/<custom_id>.json``: the one-line
  object of a job finished before flush objects (read as a one-line file)
- ``errors/<batch>/<custom_id>.json``: an error line: the job's last outcome, until
  ``chatbatch retry`` moves it to ``history/``
- ``requests/<batch>/<custom_id>.json``: the SQS message that carried a job that failed
  (``KeptRequest``: its body, a job line or a claim check, and its queue's priority), kept
  by the worker with the error so ``chatbatch retry`` can send it again
- ``history/<batch>/<custom_id>/<n>.json``: the error line a retry moved away (``n``:
  the job's retry count after it, so 1 holds the first attempt's error)
- ``costs/dt=YYYY-MM-DD/<batch>/<flush>.jsonl``: the ``CostRecord`` of each job of that
  results object, one a line (JSONL), partitioned by UTC day for Athena (``PARTITIONED BY
  (dt string)``); a call whose answer was never read has its own one-line object,
  ``costs/dt=YYYY-MM-DD/<batch>/<custom_id>/unread-<attempt>.json``
- ``cache/<sha256>.json``: a cached chat.completion body (expired by a lifecycle rule)
- ``claims/<batch>/<custom_id>.json``: a job too large for an SQS message
- ``batches/<batch>/manifest.jsonl``: the custom_ids of a submitted batch, in input order
- ``parts/<part>.jsonl``: the batch route's provider batches, each job and its line as sent
  (``batchroute/part_files.py``)
"""

from __future__ import annotations

import json
from typing import IO, TYPE_CHECKING, Any

from botocore.exceptions import ClientError
from pydantic import BaseModel

from chatbatch.core.config import Priority
from chatbatch.core.jobs import claim_key, id_key
from chatbatch.core.output_lines import CostRecord, OutputLine
from chatbatch.state.ddb import error_code

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import GetObjectOutputTypeDef

JSON = "application/json"
JSONL = "application/x-ndjson"


def result_key(batch_id: str, custom_id: str) -> str:
    """A job's own result object, as jobs had before flush objects (still read)."""
    return f"{results_prefix(batch_id)}{id_key(custom_id)}.json"


def flush_result_key(batch_id: str, flush: str) -> str:
    """The results of an invocation's jobs of ``batch_id`` (one ``OutputLine`` a line)."""
    return f"{results_prefix(batch_id)}{flush}.jsonl"


def flush_cost_key(day: str, batch_id: str, flush: str) -> str:
    """The cost records of an invocation's jobs of ``batch_id`` on ``day`` (one a line)."""
    return f"costs/dt={day}/{batch_id}/{flush}.jsonl"


def flush_of(key: str) -> str | None:
    """The flush id of a flush object's key (``.../<flush>.jsonl``); None for a one-record
    ``.json`` object (a job's own, or an unread call's cost record)."""
    name = key.rsplit("/", 1)[-1]
    return name.removesuffix(".jsonl") if name.endswith(".jsonl") else None


def object_lines(body: bytes | str) -> list[str]:
    """The records of a results or costs object: one a line (a ``.json`` object is a
    one-line file)."""
    text = body.decode() if isinstance(body, bytes) else body
    return [line for line in text.splitlines() if line.strip()]


def results_prefix(batch_id: str) -> str:
    """Where a batch's results are (``collect`` lists it; the completion event names it)."""
    return f"results/{batch_id}/"


def errors_prefix(batch_id: str) -> str:
    return f"errors/{batch_id}/"


def error_key(batch_id: str, custom_id: str) -> str:
    return f"{errors_prefix(batch_id)}{id_key(custom_id)}.json"


def refused_key(batch_id: str, message_id: str) -> str:
    """Where a message refused for its sender is recorded: by its message id, under its
    own prefix, so it never takes the place of the job it named."""
    return f"refused/{batch_id}/{message_id}.json"


def requests_prefix(batch_id: str) -> str:
    return f"requests/{batch_id}/"


def request_key(batch_id: str, custom_id: str) -> str:
    return f"{requests_prefix(batch_id)}{id_key(custom_id)}.json"


def history_key(batch_id: str, custom_id: str, retry: int) -> str:
    return f"history/{batch_id}/{id_key(custom_id)}/{retry}.json"


def cost_key(day: str, batch_id: str, custom_id: str, attempt: str | None = None) -> str:
    """A call whose answer was never read has its own cost record, under the job's name
    (an ``id_key`` never holds a ``/``); without ``attempt``: a job's own record, as jobs
    had before flush objects (still read)."""
    if attempt is not None:
        return f"costs/dt={day}/{batch_id}/{id_key(custom_id)}/unread-{attempt}.json"
    return f"costs/dt={day}/{batch_id}/{id_key(custom_id)}.json"


def manifest_key(batch_id: str) -> str:
    return f"batches/{batch_id}/manifest.jsonl"


class ObjectTooLarge(Exception):
    """An object over the size a reader accepts: refused before it was read whole."""

    def __init__(self, key: str, size: int) -> None:
        self.key = key
        self.size = size
        super().__init__(f"{key} is {size} bytes")


def _object_size(reply: GetObjectOutputTypeDef) -> int:
    """The whole object's size: ``Content-Range``'s total (``bytes 0-9/1234``), else the
    length sent (a reply that ignored the range sent the whole object)."""
    total = reply.get("ContentRange", "").rpartition("/")[2]
    return int(total) if total.isdigit() else reply["ContentLength"]


class KeptRequest(BaseModel):
    """A failed job's SQS message as the worker received it: enough to send it again."""

    batch_id: str
    custom_id: str
    priority: Priority  # the queue it came from (a line may name no priority)
    body: str  # the job line, or the claim check that points at it


class Store:
    """The bucket, seen as results, errors, costs, cache and claim checks."""

    def __init__(self, s3: S3Client, bucket: str) -> None:
        self._s3 = s3
        self.bucket = bucket

    def _put(self, key: str, text: str) -> None:
        self._s3.put_object(Bucket=self.bucket, Key=key, Body=text.encode(), ContentType=JSON)

    def _fetch(self, key: str, byte_range: str | None = None) -> GetObjectOutputTypeDef | None:
        try:
            if byte_range is None:
                return self._s3.get_object(Bucket=self.bucket, Key=key)
            return self._s3.get_object(Bucket=self.bucket, Key=key, Range=byte_range)
        except ClientError as err:  # by code: see ``transact`` in ``state.ddb`` for why
            if error_code(err) != "NoSuchKey":
                raise
            return None

    def _get(self, key: str) -> bytes | None:
        reply = self._fetch(key)
        return reply["Body"].read() if reply is not None else None

    def put_lines(self, key: str, lines: list[str]) -> None:
        """One JSONL object: ``lines``, one a line (a flush object, written whole)."""
        self._s3.put_object(
            Bucket=self.bucket,
            Key=key,
            Body="".join(f"{line}\n" for line in lines).encode(),
            ContentType=JSONL,
        )

    def get_lines(self, key: str) -> list[str] | None:
        """The records of a results or costs object; None if there is none."""
        raw = self._get(key)
        return object_lines(raw) if raw is not None else None

    def result_in(self, batch_id: str, flush: str, custom_id: str) -> OutputLine | None:
        """The job's line in the results object of ``flush``, if it holds one."""
        for text in self.get_lines(flush_result_key(batch_id, flush)) or []:
            line = OutputLine.model_validate_json(text)
            if line.custom_id == custom_id:
                return line
        return None

    def put_error(self, batch_id: str, line: OutputLine) -> None:
        self._put(error_key(batch_id, line.custom_id), line.to_line())

    def put_refused(self, batch_id: str, message_id: str, line: OutputLine) -> None:
        self._put(refused_key(batch_id, message_id), line.to_line())

    def get_error(self, batch_id: str, custom_id: str) -> OutputLine | None:
        raw = self._get(error_key(batch_id, custom_id))
        return OutputLine.model_validate_json(raw) if raw else None

    def put_request(self, kept: KeptRequest) -> None:
        self._put(request_key(kept.batch_id, kept.custom_id), kept.model_dump_json())

    def get_request(self, batch_id: str, custom_id: str) -> KeptRequest | None:
        raw = self._get(request_key(batch_id, custom_id))
        return KeptRequest.model_validate_json(raw) if raw else None

    def move_error_to_history(self, batch_id: str, custom_id: str, retry: int) -> bool:
        """Move the job's error line to its history, as retry ``retry``; False if it had none.

        Copy, then delete: a crash in between leaves both, never neither.
        """
        source = error_key(batch_id, custom_id)
        try:
            self._s3.copy_object(
                Bucket=self.bucket,
                Key=history_key(batch_id, custom_id, retry),
                CopySource={"Bucket": self.bucket, "Key": source},
            )
        except ClientError as err:
            if error_code(err) not in {"NoSuchKey", "404"}:
                raise
            return False
        self._s3.delete_object(Bucket=self.bucket, Key=source)
        return True

    def put_cost(self, record: CostRecord) -> None:
        key = cost_key(record.dt, record.batch_id, record.custom_id, record.attempt)
        self._put(key, record.model_dump_json())

    def get_cached(self, key: str) -> dict[str, Any] | None:
        raw = self._get(f"cache/{key}.json")
        return json.loads(raw) if raw else None

    def put_cached(self, key: str, body: dict[str, Any]) -> None:
        self._put(f"cache/{key}.json", json.dumps(body, separators=(",", ":")))

    def put_claim(self, batch_id: str, custom_id: str, line: str) -> str:
        key = claim_key(batch_id, custom_id)
        self._put(key, line)
        return key

    def get_text_capped(self, key: str, max_bytes: int) -> str | None:
        """The object's text, read by a ranged GET of at most ``max_bytes`` + 1 bytes: a
        larger object raises ``ObjectTooLarge`` (with its size) and is never read whole."""
        try:
            reply = self._fetch(key, f"bytes=0-{max_bytes}")
        except ClientError as err:
            if error_code(err) != "InvalidRange":
                raise
            return ""  # S3 answers a range of an empty object with 416
        if reply is None:
            return None
        with reply["Body"] as body:
            size = _object_size(reply)
            if size > max_bytes:
                raise ObjectTooLarge(key, size)
            return body.read(max_bytes + 1).decode()

    def get_text(self, key: str) -> str | None:
        raw = self._get(key)
        return raw.decode() if raw is not None else None

    def put_manifest(self, batch_id: str, custom_ids_jsonl: IO[bytes]) -> None:
        """Upload a manifest from a file (streamed, multipart when large)."""
        self._s3.upload_fileobj(custom_ids_jsonl, self.bucket, manifest_key(batch_id))
