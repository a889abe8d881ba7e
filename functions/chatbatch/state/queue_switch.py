"""The switch that stops and starts every queue's consumer: one small interface shared by
the worker (it turns it off when the day's budget is spent), the resume schedule and
``chatbatch budget set`` (they turn it on) and the local event-source emulator (its
pollers receive only while it is on).

- ``LambdaMappings``, deployed: the worker function's SQS event source mappings, switched
  with Lambda's ``UpdateEventSourceMapping`` (``Enabled``). A disabled mapping receives
  nothing, so a paused backlog costs no requests. A mapping in transition (``Disabling``,
  ``Enabling``, ...) refuses an update (``ResourceInUseException``): it is tried again,
  every ``IN_USE_WAIT_S``, up to ``IN_USE_TRIES`` times.
- ``TableSwitch``, the local runtime: an item on the shared table (``pk=switch#queues``),
  read by the emulator's pollers (``chatbatch.local.emulator``) as Lambda's pollers read
  the mapping's state. moto's own event source mappings would invoke the function
  themselves (in Docker), so the local runtime keeps its emulator and this item instead.

``queue_switch`` picks one from ``CHATBATCH_QUEUE_SWITCH``: ``table``, or
``lambda:FUNCTION`` (the default: ``lambda:`` + the function's own
``AWS_LAMBDA_FUNCTION_NAME``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import ClientError

from chatbatch.core.resources import ENV_QUEUE_SWITCH, TABLE_PK, TABLE_SK
from chatbatch.state.ddb import error_code, s

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

LambdaClient = Any  # boto3's Lambda client (no type stubs installed for it)

SWITCH_KEY = {TABLE_PK: s("switch#queues"), TABLE_SK: s("switch")}
READ_EVERY_S = 0.25  # how stale a poller's view of the local switch may be
OFF_STATES = ("Disabled", "Disabling")
IN_USE_TRIES = 10  # a mapping in transition: how many times the switch tries it
IN_USE_WAIT_S = 2.0  # and how long it waits between tries


class QueueSwitch(Protocol):
    """Every queue's consumer, on or off."""

    def set_enabled(self, enabled: bool) -> int:
        """Turn every queue's consumer on or off; how many were changed."""
        ...

    def enabled(self) -> bool:
        """Whether the consumers are on (any of them)."""
        ...


class LambdaMappings:
    """The event source mappings of one function (deployed)."""

    def __init__(
        self,
        client: LambdaClient,
        function: str,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self.function = function
        self._sleep = sleep

    def _mappings(self) -> list[dict[str, Any]]:
        pages = self._client.get_paginator("list_event_source_mappings")
        return [
            dict(m)
            for page in pages.paginate(FunctionName=self.function)
            for m in page.get("EventSourceMappings", [])
        ]

    def set_enabled(self, enabled: bool) -> int:
        """Raises the ``ResourceInUseException`` of a mapping still in transition after
        ``IN_USE_TRIES`` tries."""
        changed = 0
        for tries_left in reversed(range(IN_USE_TRIES)):
            in_use = False
            for mapping in self._mappings():
                if (mapping.get("State") not in OFF_STATES) == enabled:
                    continue
                try:
                    self._client.update_event_source_mapping(UUID=mapping["UUID"], Enabled=enabled)
                    changed += 1
                except ClientError as err:
                    if error_code(err) != "ResourceInUseException" or not tries_left:
                        raise
                    in_use = True
            if not in_use:
                break
            self._sleep(IN_USE_WAIT_S)
        return changed

    def enabled(self) -> bool:
        return any(m.get("State") not in OFF_STATES for m in self._mappings())


class TableSwitch:
    """The local runtime's switch: one item, ``enabled`` absent or true means on."""

    def __init__(
        self, ddb: DynamoDBClient, table: str, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ddb = ddb
        self._table = table
        self._clock = clock
        self._seen: tuple[float, bool] | None = None

    def set_enabled(self, enabled: bool) -> int:
        reply = self._ddb.put_item(
            TableName=self._table,
            Item={**SWITCH_KEY, "enabled": {"BOOL": enabled}},
            ReturnValues="ALL_OLD",
        )
        was = reply.get("Attributes", {}).get("enabled", {}).get("BOOL", True)
        self._seen = (self._clock(), enabled)
        return int(was != enabled)

    def enabled(self) -> bool:
        now = self._clock()
        if self._seen is not None and now - self._seen[0] < READ_EVERY_S:
            return self._seen[1]
        item = self._ddb.get_item(TableName=self._table, Key=SWITCH_KEY).get("Item", {})
        on = bool(item.get("enabled", {}).get("BOOL", True))
        self._seen = (now, on)
        return on


def queue_switch(
    ddb: DynamoDBClient,
    table: str,
    lambda_client: Callable[[], LambdaClient],
    spec: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> QueueSwitch:
    """The switch ``spec`` names (default: ``CHATBATCH_QUEUE_SWITCH``, else the running
    function's own mappings). Raises ``ValueError`` for a spec it does not know."""
    environ = os.environ if environ is None else environ
    if spec is None:
        own = environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        spec = environ.get(ENV_QUEUE_SWITCH) or f"lambda:{own}"
    if spec == "table":
        return TableSwitch(ddb, table)
    kind, _, function = spec.partition(":")
    if kind != "lambda" or not function:
        raise ValueError(
            f"queue switch {spec!r}: expected 'table' or 'lambda:FUNCTION' "
            f"(set {ENV_QUEUE_SWITCH}, or run inside the worker function)"
        )
    return LambdaMappings(lambda_client(), function)
