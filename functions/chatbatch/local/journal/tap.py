"""Where the local runtime sees every write moto applies, in the order moto applies them.

``listening(listener)`` hands a ``Listener`` each successful write to the stack's state:

- DynamoDB ``PutItem``, ``UpdateItem``, ``DeleteItem``, ``TransactWriteItems``,
  ``BatchWriteItem`` answered 2xx, as the items they left (``images``); a refused
  conditional write changed nothing and is not seen;
- S3 objects stored or deleted (a refused ``If-None-Match`` put never stores);
- SQS messages added to a queue (sent, or moved to its DLQ by the redrive policy),
  deleted, or purged.

The hooks sit in moto, under the lock of ``moto_fixes`` that serialises its request
handling, so listeners see the writes in the order they were applied, and a write is
handed over before its caller gets the answer. They sit on moto's side of the wire, so
they see ``local up``'s clients in other processes too. Creating the stack's resources
is not a write to its state: ``create_resources`` does it again in every process.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aws_lambda_powertools import Logger
from moto.core.responses import BaseResponse
from moto.s3.models import S3Backend
from moto.sqs.models import Message, Queue, SQSBackend

from chatbatch.local import moto_fixes
from chatbatch.local.journal.images import Change, after_images
from chatbatch.local.moto_fixes import LOCK

DDB_WRITES = frozenset(
    {"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem"}
)
logger = Logger(service="chatbatch-local")


class Listener:
    """Told about each write; every method does nothing unless overridden."""

    def ddb(self, changes: list[Change]) -> None:
        """A DynamoDB write that succeeded, as the items it left (``images``)."""

    def s3_put(self, bucket: str, key: str, body: bytes) -> None:
        """An S3 object stored."""

    def s3_delete(self, bucket: str, key: str) -> None:
        """An S3 object deleted."""

    def sqs_add(self, queue: str, message: Message) -> None:
        """A message added to ``queue`` (by name): sent, or moved there as a dead letter."""

    def sqs_delete(self, message_ids: list[str]) -> None:
        """Messages deleted."""

    def sqs_purge(self, queue: str) -> None:
        """Every message of ``queue`` deleted."""


_listeners: list[Listener] = []


def attach(listener: Listener) -> None:
    """``listener`` is told about every write from now on."""
    install()
    with LOCK:
        _listeners.append(listener)


def detach(listener: Listener) -> None:
    with LOCK:
        _listeners.remove(listener)


@contextmanager
def listening(listener: Listener) -> Iterator[Listener]:
    """``listener`` is told about every write until the block ends."""
    attach(listener)
    try:
        yield listener
    finally:
        detach(listener)


def _tell(event: str, *args: Any) -> None:
    for listener in list(_listeners):
        try:
            getattr(listener, event)(*args)
        except Exception:  # a listener must never fail moto's request
            logger.exception(f"local state: a listener failed on {event}")


@functools.cache
def install() -> None:
    """Put the hooks in moto (once; they cost a list check while nobody listens)."""
    moto_fixes.apply()
    call_action = BaseResponse.call_action

    def tapped_call_action(self: BaseResponse) -> Any:
        with LOCK:
            response = call_action(self)
            if _listeners and self.service_name == "dynamodb" and 200 <= int(response[0]) < 300:
                operation = self._get_action()
                if operation in DDB_WRITES:
                    handler: Any = self  # DynamoHandler: its parsed parameters are its body
                    backend = handler.dynamodb_backend
                    _tell("ddb", after_images(backend, operation, handler.body))
            return response

    BaseResponse.call_action = tapped_call_action  # type: ignore[method-assign]

    put_object = S3Backend.put_object
    delete_object = S3Backend.delete_object

    def tapped_put_object(
        self: S3Backend, bucket_name: str, key_name: str, value: bytes, *args: Any, **kw: Any
    ) -> Any:
        with LOCK:
            stored = put_object(self, bucket_name, key_name, value, *args, **kw)
            if _listeners:
                _tell("s3_put", bucket_name, key_name, bytes(value))
            return stored

    def tapped_delete_object(
        self: S3Backend, bucket_name: str, key_name: str, *args: Any, **kw: Any
    ) -> Any:
        with LOCK:
            deleted = delete_object(self, bucket_name, key_name, *args, **kw)
            if _listeners:
                _tell("s3_delete", bucket_name, key_name)
            return deleted

    S3Backend.put_object = tapped_put_object  # type: ignore[method-assign]
    S3Backend.delete_object = tapped_delete_object  # type: ignore[method-assign]
    _tap_sqs()


def _tap_sqs() -> None:
    add_message = Queue.add_message
    delete_message = Queue.delete_message
    purge_queue = SQSBackend.purge_queue

    def tapped_add_message(self: Queue, message: Message) -> None:
        with LOCK:
            add_message(self, message)
            if _listeners:
                _tell("sqs_add", self.name, message)

    def tapped_delete_message(self: Queue, receipt_handle: str) -> None:
        with LOCK:
            if not _listeners:
                delete_message(self, receipt_handle)
                return
            ids = [m.id for m in self._messages if m.had_receipt_handle(receipt_handle)]
            delete_message(self, receipt_handle)
            if ids:
                _tell("sqs_delete", ids)

    def tapped_purge_queue(self: SQSBackend, queue_name: str) -> None:
        with LOCK:
            purge_queue(self, queue_name)
            if _listeners:
                _tell("sqs_purge", queue_name)

    Queue.add_message = tapped_add_message  # type: ignore[method-assign]
    Queue.delete_message = tapped_delete_message  # type: ignore[method-assign]
    SQSBackend.purge_queue = tapped_purge_queue  # type: ignore[method-assign]
