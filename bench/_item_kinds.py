"""The kinds of item on the shared DynamoDB table, told apart by their keys, and how many
jobs share one item of each kind (its scope).

Each kind's key shape comes from the state code's own key function, called with a marker
where an identifier goes (``day_key(ANY)`` is ``budget#day#<ANY>`` / ``ledger``), so a key
the code changes or adds shows up as unclassified rather than as a wrong figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from chatbatch.core.resources import TABLE_PK, TABLE_SK
from chatbatch.state.batches import SALT_KEY, batch_key, counter_key, job_key
from chatbatch.state.breaker import breaker_key
from chatbatch.state.budget.ledger import (
    LIMITS_KEY,
    batch_layout_key,
    batch_ledger_key,
    day_key,
    layout_key,
    open_key,
    reservation_key,
)
from chatbatch.state.budget.pause import PAUSE_KEY
from chatbatch.state.limiter.item import key as limiter_key
from chatbatch.state.queue_switch import SWITCH_KEY

ANY = "\x00"  # where an identifier goes (a day, a batch id, a job key, a model)
UNCLASSIFIED = "unclassified"


class Scope(StrEnum):
    """The jobs that write one item of a kind."""

    DEPLOYMENT = "every job"  # one item (or a fixed few, sharded) for the whole deployment
    BATCH = "the batch's jobs"  # one item per batch
    JOB = "one job"  # one item per job


@dataclass(frozen=True)
class Kind:
    name: str
    pk_prefix: str  # the partition key up to its first identifier
    sk_prefix: str  # the sort key up to its first identifier (all of it when it has none)
    sk_exact: bool
    scope: Scope
    # the jobs that share one partition key of the kind, when it holds many items
    partition: Scope | None = None
    # the exact sort key of the kind's shard items, under the same partition key prefix
    # (a batch's counter shards: ``batch#<id>#c<k>`` / ``count``)
    shard_sk: str | None = None

    @classmethod
    def of(
        cls,
        name: str,
        key: dict[str, Any],
        scope: Scope,
        partition: Scope | None = None,
        shard: dict[str, Any] | None = None,
    ) -> Kind:
        pk, sk = str(key[TABLE_PK]["S"]), str(key[TABLE_SK]["S"])
        shard_sk = None
        if shard is not None:
            shard_pk, shard_sk = str(shard[TABLE_PK]["S"]), str(shard[TABLE_SK]["S"])
            assert shard_pk.startswith(pk.split(ANY, 1)[0]) and ANY not in shard_sk
        prefixes = (pk.split(ANY, 1)[0], sk.split(ANY, 1)[0], ANY not in sk)
        return cls(name, *prefixes, scope, partition, shard_sk)

    def matches(self, pk: str, sk: str) -> bool:
        if not pk.startswith(self.pk_prefix):
            return False
        if sk == self.shard_sk:
            return True
        return sk == self.sk_prefix if self.sk_exact else sk.startswith(self.sk_prefix)

    def batch_of(self, pk: str) -> str | None:
        """The batch an item of a batch-scoped kind belongs to (its key's identifier, up to
        a shard's suffix: batch ids hold no ``#``)."""
        if self.scope is not Scope.BATCH:
            return None
        return pk.removeprefix(self.pk_prefix).split("#", 1)[0]


KINDS = (
    # shards too: ``budget#day#<day>#<k>`` (and a limited batch's, its open markers')
    Kind.of("day's budget ledger", day_key(ANY), Scope.DEPLOYMENT),
    Kind.of("day's ledger layout", layout_key(ANY), Scope.DEPLOYMENT),
    Kind.of("batch budget ledger", batch_ledger_key(ANY), Scope.BATCH),
    Kind.of("batch ledger layout", batch_layout_key(ANY), Scope.BATCH),
    Kind.of("batch counters + completion", batch_key(ANY), Scope.BATCH, shard=counter_key(ANY, 0)),
    Kind.of("job state", job_key(ANY, ANY), Scope.JOB),
    Kind.of("budget reservation", reservation_key(ANY), Scope.JOB),
    # a job's marker under its day's partition key (``budget#open#<day>``)
    Kind.of("open marker", open_key(ANY, ANY), Scope.JOB, partition=Scope.DEPLOYMENT),
    Kind.of("limiter shard", limiter_key(ANY, 0), Scope.DEPLOYMENT),
    Kind.of("model breaker", breaker_key(ANY), Scope.DEPLOYMENT),
    Kind.of("budget pause", PAUSE_KEY, Scope.DEPLOYMENT),
    Kind.of("queue switch", SWITCH_KEY, Scope.DEPLOYMENT),
    Kind.of("raised daily limit", LIMITS_KEY, Scope.DEPLOYMENT),
    Kind.of("deployment salt", SALT_KEY, Scope.DEPLOYMENT),
)
# The longest prefix first: "budget#day#" before any shorter prefix it starts with.
_BY_PREFIX = sorted(KINDS, key=lambda k: (len(k.pk_prefix), len(k.sk_prefix)), reverse=True)


def kind_of(pk: str, sk: str) -> Kind | None:
    """The kind of the item with this key; None when no state code builds such a key."""
    return next((k for k in _BY_PREFIX if k.matches(pk, sk)), None)
