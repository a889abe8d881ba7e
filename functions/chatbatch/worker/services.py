"""What a worker instance builds once and reuses: config, AWS clients, the provider client.

Deployed, a provider's API key comes from its Secrets Manager secret (the stack passes the
secret's ARN in ``CHATBATCH_SECRET_<PROVIDER>``, cached 5 min); locally, from the
provider's own environment variable (``api_key_env``, default ``<NAME>_API_KEY``) and
nowhere else: one provider's key is never sent to another. Either is checked when read
(``chatbatch.provider.keys.checked_key``): a malformed key raises an error naming the
secret or the variable, never the key, an unset variable one naming the provider and the
variable (``MissingKeyError``), and the provider client pauses the model for either.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import boto3
from aws_lambda_powertools.utilities.parameters import get_secret
from botocore.config import Config as BotoConfig

from chatbatch.core import scale
from chatbatch.core.config import Config, load_config
from chatbatch.core.principals import caller_principal
from chatbatch.core.resources import ENV_TRUSTED_SENDERS, Resources
from chatbatch.provider.client import ProviderClient
from chatbatch.provider.keys import MissingKeyError, checked_key
from chatbatch.state.batches import Batches
from chatbatch.state.breaker import Breakers
from chatbatch.state.budget.budget import Budget
from chatbatch.state.budget.pause import BudgetPause
from chatbatch.state.completion import Completions
from chatbatch.state.limiter.limiter import RateLimiter
from chatbatch.state.parts import Parts
from chatbatch.state.queue_switch import QueueSwitch, queue_switch
from chatbatch.state.store import Store

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

SECRET_ENV_PREFIX = "CHATBATCH_SECRET_"
# A throttled DynamoDB write (ProvisionedThroughputExceededException: a hot item past its
# write units a second) is retried by botocore with a jittered backoff that doubles from
# 1 s ("standard" mode; "legacy", which AWS_RETRY_MODE or an older botocore could pick,
# doubles from 50 ms without jitter: every instance throttled at once retries at once).
# Past the last attempt the call raises; the job's message comes back (``docs/exactly-once.md``).
DDB_RETRIES = BotoConfig(retries={"mode": "standard", "total_max_attempts": 5})


@dataclass
class Services:
    """What a worker instance holds across invocations."""

    config: Config
    resources: Resources
    store: Store
    batches: Batches
    budget: Budget
    limiter: RateLimiter
    provider: ProviderClient
    sqs: SQSClient
    breakers: Breakers
    completions: Completions
    events: Any  # EventBridge client (no type stubs installed)
    principal: str  # this worker's own principal id: its hand-backs are its messages
    # principal ids of the pipeline's other senders (the gatherer: jobs back to sync)
    trusted: frozenset[str]
    pause: BudgetPause  # the pipeline's pause when the day's budget is spent
    switch: QueueSwitch  # every queue's consumer, on or off
    parts: Parts  # the batch route's provider batches (the gatherer's)
    paused_since: float | None = None  # the pause this instance switched the queues off for


def secret_env(provider: str) -> str:
    return SECRET_ENV_PREFIX + "".join(c if c.isalnum() else "_" for c in provider.upper())


def api_key(provider: str) -> str | None:
    """Deployed: the provider's Secrets Manager secret (cached 5 min); locally: the
    provider's own ``api_key_env``, with no fallback to any other variable.

    Raises ``MalformedKeyError`` for a key that is not a printable-ASCII token (the ends
    are stripped: a secret saved from a file ends in a newline), ``MissingKeyError`` when
    the variable is unset or blank."""
    arn = os.environ.get(secret_env(provider))
    if arn:
        return checked_key(str(get_secret(arn, max_age=300)), f"Secrets Manager secret {arn}")
    env = load_config_cached().key_env(provider)
    raw = os.environ.get(env, "")
    if not raw.strip():
        raise MissingKeyError(provider, env)
    return checked_key(raw, f"environment variable {env}")


@cache
def load_config_cached() -> Any:
    return load_config()


@cache
def own_principal() -> str:
    """The worker's principal id (its role's id), from STS once per process."""
    return caller_principal(boto3.client("sts"))


IO_THREADS_PER_JOB = 2  # a job's blocking calls that may be under way at once
IO_THREADS_SPARE = 4  # the invocation's own (the limiter's lease, the capacity's close)


def io_threads(config: Config) -> int:
    """Threads for an instance's blocking AWS calls (``io_pool``): every job of
    a batch at once. The AWS clients keep as many connections (boto3 keeps 10), or the
    calls beyond them would open, and throw away, a new connection each."""
    return IO_THREADS_PER_JOB * config.worker.batch_size + IO_THREADS_SPARE


def io_pool(config: Config) -> ThreadPoolExecutor:
    """The threads an instance runs its blocking AWS calls in (``io``): enough for every
    job of a batch at once (``io_threads``). asyncio's default, ``min(32, cpus +
    4)`` (6 on 2 vCPUs), made a job's time-critical call (the limiter's grant, the arm
    before the send) queue behind its neighbours' S3 writes, and the job missed the send
    time it was spaced to."""
    return ThreadPoolExecutor(io_threads(config), thread_name_prefix="chatbatch-io")


def build_services() -> Services:
    config = load_config_cached()
    resources = Resources.from_env()
    pooled = BotoConfig(max_pool_connections=io_threads(config))
    ddb = boto3.client("dynamodb", config=pooled.merge(DDB_RETRIES))
    batches = Batches(ddb, resources.table, counter_shards=scale.plan(config).counter_shards)
    limiter = RateLimiter(ddb, resources.table, config)
    provider = ProviderClient(config, api_key, on_attempt=limiter.observe_attempt)
    return Services(
        config=config,
        resources=resources,
        store=Store(boto3.client("s3", config=pooled), resources.bucket),
        batches=batches,
        budget=Budget(ddb, resources.table, config),
        limiter=limiter,
        provider=provider,
        sqs=boto3.client("sqs", config=pooled),
        breakers=Breakers(ddb, resources.table),
        completions=Completions(ddb, resources.table),
        events=boto3.client("events", config=pooled),
        principal=own_principal(),
        trusted=frozenset(t for t in os.environ.get(ENV_TRUSTED_SENDERS, "").split(",") if t),
        pause=BudgetPause(ddb, resources.table),
        switch=queue_switch(ddb, resources.table, lambda: boto3.client("lambda")),
        parts=Parts(ddb, resources.table, batches),
    )
