"""Submitting a JSONL file: validate every line, plan, register the batch, send the jobs.

The file is streamed twice (validate, then send) and never held in memory: a
1,000,000-line file costs the set of its custom_id hashes (for the duplicate check) and
a manifest written to a temporary file. Jobs go out with SendMessageBatch (10 per call)
from a thread pool; a job over ``SQS_MAX_BYTES`` is written to S3 and travels as a claim
check. Message ids are deterministic per (batch, custom_id) and a job already finished
is skipped by the worker, so re-running the same submit does not duplicate work.

A job routed to its provider's batch API (``core.routing``, issue 17) goes to the batch
route's queue instead of its priority's, with the same body (its line keeps its
priority): the gatherer takes it from there. A deployment without that queue (a stack
from before the route) is refused before anything is sent (``check_batch_route``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

import boto3

from chatbatch.core.config import Config, Priority
from chatbatch.core.job_lines import parse_lines
from chatbatch.core.jobs import Job, JobError
from chatbatch.core.principals import caller_principal
from chatbatch.core.resources import Resources
from chatbatch.core.routing import ROUTE_KINDS, Override, RouteKind, route
from chatbatch.state.batches import Batches
from chatbatch.state.sender import BATCH_LANE, NO_BATCH_ROUTE, Lane, NoBatchRoute, Sender
from chatbatch.state.store import Store
from chatbatch.translate import checked

if TYPE_CHECKING:
    pass

SEND_THREADS = 8


@dataclass
class RouteTotals:
    """The jobs of a file one route takes (``core.routing``), and what they may cost: the
    worst case at the route's prices (a batch job's at its model's batch prices) and, to
    show what the route saves, at the synchronous prices."""

    jobs: int = 0
    by_model: Counter[str] = field(default_factory=Counter)
    worst_case_usd: Decimal = Decimal(0)
    at_sync_prices_usd: Decimal = Decimal(0)


@dataclass
class Plan:
    """What a file holds: the numbers ``submit`` prints before sending anything."""

    batch_id: str
    default_priority: Priority
    lines: int = 0
    valid: int = 0
    invalid: int = 0
    errors: list[JobError] = field(default_factory=list)  # the first ``max_errors``
    by_priority: Counter[Priority] = field(default_factory=Counter)
    by_model: Counter[str] = field(default_factory=Counter)
    tokens_by_model: Counter[str] = field(default_factory=Counter)
    worst_case_usd: Decimal = Decimal(0)
    checksum: str = ""
    form: Literal["openai", "anthropic"] = "openai"  # its lines' (one form per file)
    routes: dict[RouteKind, RouteTotals] = field(
        default_factory=lambda: {kind: RouteTotals() for kind in ROUTE_KINDS}
    )
    override: Override = "auto"  # the routes were decided under it; the jobs are sent so

    def estimate_s(self, config: Config) -> float:
        """Lower bound on wall time from the rate limits: the slowest model's queue."""
        minutes = [
            max(count / config.models[m].rpm, self.tokens_by_model[m] / config.models[m].tpm)
            for m, count in self.by_model.items()
        ]
        return 60 * max(minutes, default=0.0)


def open_lines(path: Path) -> IO[bytes]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; give the path of a JSONL jobs file")
    return path.open("rb")


def priority_of(job: Job, default: Priority) -> Priority:
    return job.priority or default


def plan_file(
    path: Path,
    config: Config,
    batch_id: str,
    default_priority: Priority,
    max_errors: int = 1000,
    *,
    on_bytes: Callable[[int], None] | None = None,
    override: Override = "auto",
) -> Plan:
    """Validate every line (streamed) and add up what the batch will ask for.

    Each valid job is routed (``core.routing.route`` under ``override``): a job an
    override ``batch`` cannot take is an invalid line naming the field; the others are
    added up per route, at that route's prices.
    ``on_bytes`` is told the size of every line read (for a progress bar). The batch's
    form is its valid lines' (one form per file); when none is valid, the form of its
    first line that is a JSON object, so its errors are written in the form it was sent in.
    """
    plan = Plan(batch_id=batch_id, default_priority=default_priority, override=override)
    digest = hashlib.sha256()
    refused_form = None  # a file of only invalid lines is answered in its lines' form
    with open_lines(path) as lines:
        hashed = _hashing(lines, digest, plan, on_bytes)
        for number, line in parse_lines(hashed, config):
            routed = _routed(
                checked(line, config, number), config, override, default_priority, number
            )
            if isinstance(routed, JobError):
                refused_form = refused_form or routed.form
                plan.invalid += 1
                if len(plan.errors) < max_errors:
                    plan.errors.append(routed)
                continue
            job, kind = routed
            model = config.models[job.model]
            if not plan.valid:
                plan.form = job.form
            plan.valid += 1
            plan.by_priority[priority_of(job, default_priority)] += 1
            plan.by_model[job.model] += 1
            plan.tokens_by_model[job.model] += job.estimated_tokens(model)
            totals = plan.routes[kind]
            totals.jobs += 1
            totals.by_model[job.model] += 1
            at_sync = job.worst_case_usd(model)
            worst = job.worst_case_usd(model.batch_priced()) if kind == "batch" else at_sync
            totals.worst_case_usd += worst
            totals.at_sync_prices_usd += at_sync
            plan.worst_case_usd += worst
    if not plan.valid and refused_form is not None:
        plan.form = refused_form
    plan.checksum = digest.hexdigest()
    return plan


def _routed(
    parsed: Job | JobError, config: Config, override: Override, default: Priority, line: int
) -> tuple[Job, RouteKind] | JobError:
    """A checked line with its route, or the ``JobError`` of a line or of a route refused."""
    if isinstance(parsed, JobError):
        return parsed
    try:
        return parsed, route(parsed, config, override, default_priority=default).kind
    except JobError as err:
        err.line, err.form = line, parsed.form
        return err


def _hashing(
    lines: Iterable[bytes],
    digest: hashlib._Hash,
    plan: Plan,
    on_bytes: Callable[[int], None] | None,
) -> Iterator[bytes]:
    for line in lines:
        digest.update(line)
        plan.lines += 1
        if on_bytes:
            on_bytes(len(line))
        yield line


def iter_jobs(path: Path, config: Config, batch_id: str) -> Iterator[Job]:
    """The valid jobs of a file, in order, stamped with the batch id (streamed)."""
    with open_lines(path) as lines:
        for number, line in parse_lines(lines, config):
            parsed = checked(line, config, number)
            if isinstance(parsed, Job):
                yield parsed.model_copy(update={"batch_id": batch_id})


def routed_jobs(
    jobs: Iterable[Job], config: Config, override: Override, default: Priority | None = None
) -> Iterator[tuple[Job, RouteKind]]:
    """Each job with its route, as ``plan_file`` decided it (``default``: the priority of
    lines that name none); a job the override cannot route (``--route batch`` for a
    streaming job) is an invalid line of the plan: left out."""
    for job in jobs:
        try:
            yield job, route(job, config, override, default_priority=default).kind
        except JobError:
            continue


def check_batch_route(plan: Plan, resources: Resources) -> None:
    """Raises ``NoBatchRoute`` when the plan routes jobs to batch and the deployment has
    no batch queue: checked before anything is registered or sent, so the same file can
    be submitted again with ``--route sync``."""
    if plan.routes["batch"].jobs and resources.batch_queue is None:
        raise NoBatchRoute(NO_BATCH_ROUTE)


def lane_of(job: Job, kind: RouteKind, default: Priority) -> Lane:
    return BATCH_LANE if kind == "batch" else priority_of(job, default)


def batched_by_lane(
    routed: Iterable[tuple[Job, RouteKind]], default: Priority, size: int = 10
) -> Iterator[tuple[Lane, list[Job]]]:
    """Chunks of at most ``size`` jobs going to the same queue."""
    pending: dict[Lane, list[Job]] = {}
    for job, kind in routed:
        lane = lane_of(job, kind, default)
        bucket = pending.setdefault(lane, [])
        bucket.append(job)
        if len(bucket) == size:
            yield lane, bucket[:]
            bucket.clear()
    for lane, rest in pending.items():
        if rest:
            yield lane, rest


def write_manifest(
    path: Path, config: Config, batch_id: str, store: Store, *, override: Override = "sync"
) -> None:
    """The batch's custom_ids in input order, for ``collect``: the jobs sent, so not
    those the plan's ``override`` refused (``routed_jobs``)."""
    jobs = routed_jobs(iter_jobs(path, config, batch_id), config, override)
    with tempfile.TemporaryFile() as tmp:
        for job, _ in jobs:
            tmp.write(json.dumps(job.custom_id).encode() + b"\n")
        tmp.seek(0)
        store.put_manifest(batch_id, tmp)


def register(
    plan: Plan, batches: Batches, budget_nanos: int | None, registrant: str | None = None
) -> None:
    """Register the plan's batch as this caller's (``registrant``, default: the caller's
    principal id from STS): the workers refuse its jobs from any other sender."""
    batches.register(
        plan.batch_id,
        total=plan.valid,
        priority=plan.default_priority.value,
        checksum=plan.checksum,
        registrant=registrant or caller_principal(boto3.client("sts")),
        budget_nanos=budget_nanos,
        form=plan.form,
    )


def send_file(
    path: Path,
    config: Config,
    plan: Plan,
    sender: Sender,
    *,
    on_sent: Callable[[int], None] = lambda n: None,
) -> int:
    """Send every valid job of the file to its queue (its route under the plan's
    override); returns the number sent."""
    jobs = iter_jobs(path, config, plan.batch_id)
    routed = routed_jobs(jobs, config, plan.override, plan.default_priority)
    sent = 0
    with ThreadPoolExecutor(SEND_THREADS) as pool:
        window: list[Future[int]] = []
        for lane, chunk in batched_by_lane(routed, plan.default_priority):
            window.append(pool.submit(sender.send, lane, chunk))
            if len(window) >= SEND_THREADS * 4:
                for future in window:
                    done = future.result()
                    sent += done
                    on_sent(done)
                window.clear()
        for future in window:
            done = future.result()
            sent += done
            on_sent(done)
    return sent


def checksum_batch_id(checksum: str, salt: str) -> str:
    """A batch id derived from the file's content and the deployment's secret salt
    (``Batches.id_salt``): re-submitting a file to the same deployment reuses it, and no
    one can guess it from the file without the salt (an HMAC, not a plain hash)."""
    return f"b-{hmac.new(salt.encode(), checksum.encode(), hashlib.sha256).hexdigest()[:16]}"
