"""Small, contained fixes to moto (pinned at 5.2.5) for the local runtime.

They patch moto's internals, so they are written for one moto version
(``extra.SUPPORTED_MOTO``): ``apply()`` refuses any other with ``UnsupportedMoto``, which
names both versions and the pin to install.

1. **Thread safety.** moto's backends check, then write, without a lock: two threads can
   both pass one DynamoDB condition, two pollers can receive one SQS message, and two
   S3 ``PutObject`` calls with ``If-None-Match: *`` can both write (each told it was
   first: results written that way, as before flush objects, let two deliveries count
   different results).
   Every moto request is served under one lock (moto is bound to one core by the GIL
   anyway, so this costs no throughput): ``call_action``, and S3's bucket and object
   requests, which moto dispatches around it.
2. **TransactWriteItems.** moto deep-copies every table a transaction touches, before
   each transaction, to roll back on failure: O(table size) per call, which makes a local
   run quadratic, and the rollback overwrites writes made meanwhile. Here only the items
   the transaction touches are saved and restored.
3. **SQS queue attributes.** ``Queue.attributes`` computes every attribute, and each of
   the three approximate counts scans every stored message; moto reads it for each
   message sent (``ContentBasedDeduplication``) and each message received
   (``MessageRetentionPeriod``), three times per read. Here it is a mapping that computes
   an attribute when it is read (the counts only when asked for), the same values.

4. **Update expressions, parsed once.** moto tokenises and parses an UpdateExpression
   two or three times per update. The parse of a given string is kept (the validator
   works on a deep copy of it, so the kept tree is never changed); our expressions are a
   few dozen distinct strings.

5. **SQS SenderId.** moto stamps every message with one fixed ``SenderId``. Here a
   message carries its sender's principal id, as SQS does: the ``UserId`` STS
   GetCallerIdentity gives for the request's access key (an assumed role's
   ``AROA…:SESSION``), which the worker checks against the batch's registrant.

6. **DynamoDB answers as plain JSON.** moto serialises each DynamoDB answer by walking
   botocore's output shape, value by value: the limiter's item of ~200 numbers costs more
   CPU than the update itself. An answer of plain JSON values (no bytes, no timestamps, no
   nulls) is written with ``json.dumps``, as DynamoDB writes it; any other goes the shape
   way. botocore parses both alike (``test_moto_fixes.py`` compares them).

``apply()`` is idempotent; ``tests/unit/test_moto_fixes.py`` fails if any fix is lost.
"""

from __future__ import annotations

import contextvars
import copy
import functools
import json
import threading
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from moto.core.responses import BaseResponse
from moto.core.utils import camelcase_to_underscores
from moto.dynamodb import models as ddb_models
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.table import Table
from moto.dynamodb.parsing.expressions import UpdateExpressionParser  # type: ignore[attr-defined]
from moto.dynamodb.responses import DynamoResult
from moto.s3.responses import S3Response
from moto.sqs.models import Message, Queue, SQSBackend
from moto.sqs.responses import SQSResponse
from moto.sts.models import sts_backends

from chatbatch.local.extra import check_moto

LOCK = threading.RLock()
PLAIN_ANSWERS = True  # fix 6 on (tests turn it off to compare with moto's own answers)
_SENDER: contextvars.ContextVar[str | None] = contextvars.ContextVar("sender", default=None)
# moto's own: every attribute at once
MOTO_QUEUE_ATTRIBUTES: Callable[[Queue], dict[str, Any]] = Queue.__dict__["attributes"].fget

Saved = tuple[Table, DynamoType, DynamoType | None, Any]


def _deepcopy_but_tables(value: Any, memo: dict[int, Any] | None = None) -> Any:
    return value if isinstance(value, Table) else copy.deepcopy(value, memo)


def _touched(backend: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> list[Saved]:
    saved: list[Saved] = []
    for entry in transact_items:
        _, op = next(iter(entry.items()))
        table = backend.tables.get(op.get("TableName", ""))
        if table is None:
            continue
        key = op.get("Key") or op.get("Item") or {}
        if table.hash_key_attr not in key:
            continue
        hash_value = DynamoType(key[table.hash_key_attr])
        range_attr = table.range_key_attr
        range_value = DynamoType(key[range_attr]) if range_attr and range_attr in key else None
        current = table.get_item(hash_value, range_value)
        saved.append((table, hash_value, range_value, copy.deepcopy(current)))
    return saved


def _restore(saved: list[Saved]) -> None:
    for table, hash_value, range_value, old in reversed(saved):
        if range_value is None:
            if old is None:
                table.items.pop(hash_value, None)
            else:
                table.items[hash_value] = old
        elif old is None:
            table.items.get(hash_value, {}).pop(range_value, None)
        else:
            table.items[hash_value][range_value] = old


class QueueAttributes(Mapping[str, Any]):
    """``Queue.attributes``, each value computed when read. Reading all of them (iterating)
    is moto's own computation; one attribute is computed the way moto computes it."""

    # moto serialises these two specially: read them from its full computation
    _SPECIAL = frozenset({"Policy", "RedrivePolicy"})

    def __init__(self, queue: Queue, compute_all: Callable[[Queue], dict[str, Any]]) -> None:
        self._queue = queue
        self._compute_all = compute_all
        self._all: dict[str, Any] | None = None

    def _full(self) -> dict[str, Any]:
        if self._all is None:
            self._all = self._compute_all(self._queue)
        return self._all

    def _names(self) -> list[str]:
        q = self._queue
        names = list(q.BASE_ATTRIBUTES)
        if q.fifo_queue:
            names += q.FIFO_ATTRIBUTES
        if getattr(q, "kms_master_key_id", None):
            names += q.KMS_ATTRIBUTES
        return names

    def __getitem__(self, name: str) -> Any:
        if name not in self._names():
            raise KeyError(name)
        if name in self._SPECIAL:
            return self._full()[name]
        value = getattr(self._queue, camelcase_to_underscores(name))
        return str(value).lower() if isinstance(value, bool) else value

    def __iter__(self) -> Iterator[str]:
        return iter(self._full())

    def __len__(self) -> int:
        return len(self._full())


def _locked(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with LOCK:
            return method(*args, **kwargs)

    return locked


def apply() -> None:
    """Check the installed moto is the one the fixes were written for, then apply them once."""
    check_moto()
    _apply_once()


@functools.cache
def _apply_once() -> None:
    call_action = BaseResponse.call_action

    def locked_call_action(self: BaseResponse) -> Any:
        with LOCK:
            return call_action(self)

    BaseResponse.call_action = locked_call_action  # type: ignore[method-assign]

    # S3 serves bucket and object requests itself, not through call_action
    for name in ("bucket_response", "key_response"):
        setattr(S3Response, name, _locked(getattr(S3Response, name)))

    # moto's own table snapshot becomes the table itself (its rollback then a no-op) ...
    shim = types.SimpleNamespace(deepcopy=_deepcopy_but_tables, copy=copy.copy)
    ddb_models.copy = shim  # type: ignore[assignment,attr-defined]
    transact = DynamoDBBackend.transact_write_items

    # ... and the items it touches are saved and restored instead.
    def item_level_transact(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
        with LOCK:
            saved = _touched(self, transact_items)
            try:
                transact(self, transact_items)
            except Exception:
                _restore(saved)
                raise

    DynamoDBBackend.transact_write_items = item_level_transact  # type: ignore[method-assign]

    Queue.attributes = property(lambda q: QueueAttributes(q, MOTO_QUEUE_ATTRIBUTES))  # type: ignore[assignment,method-assign]

    parse = functools.lru_cache(maxsize=1024)(UpdateExpressionParser.make)
    UpdateExpressionParser.make = parse

    _stamp_senders()
    _plain_dynamo_answers()


def _plain(value: Any) -> bool:
    """Only JSON's own values, no nulls: what DynamoDB's answers hold but for binaries."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return isinstance(value, (str, int, float, bool))


def _plain_dynamo_answers() -> None:
    """Fix 6: a DynamoDB answer of plain JSON values is sent as ``json.dumps`` writes it."""
    by_shape = DynamoResult.execute_result

    def execute_result(self: DynamoResult, context: Any) -> Any:
        if not PLAIN_ANSWERS or not _plain(self.result):
            return by_shape(self, context)
        return 200, {"Content-Type": "application/x-amz-json-1.0"}, json.dumps(self.result)

    DynamoResult.execute_result = execute_result  # type: ignore[method-assign,assignment]


def _stamp_senders() -> None:
    """Fix 5: each message sent carries its sender's principal id (``SenderId``)."""
    send = SQSBackend.send_message

    def stamped_send(self: SQSBackend, *args: Any, **kwargs: Any) -> Message:
        message = send(self, *args, **kwargs)
        message.sender_id = _SENDER.get() or message.sender_id
        return message

    SQSBackend.send_message = stamped_send  # type: ignore[method-assign]
    for action in ("send_message", "send_message_batch"):
        setattr(SQSResponse, action, _as_sender(getattr(SQSResponse, action)))


def _as_sender(action: Callable[[SQSResponse], Any]) -> Callable[[SQSResponse], Any]:
    @functools.wraps(action)
    def sent_as_caller(self: SQSResponse) -> Any:
        sts = sts_backends[self.current_account][self.partition]
        user_id, _, _ = sts.get_caller_identity(self.get_access_key(), self.region)
        token = _SENDER.set(user_id)
        try:
            return action(self)
        finally:
            _SENDER.reset(token)

    return sent_as_caller
