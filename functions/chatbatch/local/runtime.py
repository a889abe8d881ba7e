"""`chatbatch local run`: the whole pipeline on this machine.

moto stands in for AWS (in-process for ``run``, its HTTP server for ``up``), the provider
simulator (or ``--provider-url``) for the chat API, and ``EventSourceMapping`` pollers call
the real handler (``chatbatch.worker.handler.handler``) with real SQS events. The jobs go through
``chatbatch.client.submit``, the same code as ``chatbatch submit``, with one difference: moto's
SQS slows down with queue depth (it rescans every stored message on each send and
receive), so instead of pouring the whole file into the queues, each priority's queue is
fed from its own backlog and kept at most ``FEED_DEPTH`` messages deep. Priority order
survives, since every priority has its own feeder.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import tempfile
import threading
import time
import warnings
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from pydantic import BaseModel

from chatbatch.client.submit import (
    Plan,
    Sender,
    iter_jobs,
    plan_file,
    priority_of,
    register,
    write_manifest,
)
from chatbatch.core.config import Config, Priority, load_config
from chatbatch.core.jobs import Job, OutputLine
from chatbatch.core.pricing import from_nanos
from chatbatch.core.resources import Resources, resources_to_outputs
from chatbatch.local.aws import (
    create_resources,
    moto_in_process,
    moto_server,
    patched_env,
)
from chatbatch.local.emulator import EventSourceMapping, MappingSettings
from chatbatch.local.simulator import Simulator, SimulatorSettings
from chatbatch.state.batches import Batches, BatchInfo
from chatbatch.state.store import Store

FEED_DEPTH = 100
POLL_S = 0.25  # how often the batch's counters are read while waiting
LOCAL_KEY = "sk-local-simulator"


@dataclass
class LocalOptions:
    config_path: Path | None = None
    provider_url: str | None = None
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: Decimal | None = None
    priority: Priority | None = None
    concurrency: int | None = None
    seed: int = 0
    batch_id: str = "local"
    simulator: SimulatorSettings | None = None
    server: bool = False  # moto's HTTP server instead of in-process (``local up``)
    port: int = 0  # moto server's port (0: a free one)
    timeout_s: float = 3600.0
    # redelivery after a crash; default: the function timeout + 1 min (never while it runs)
    visibility_timeout_s: int | None = None
    log_level: str = "WARNING"
    log_file: Path | None = None  # the worker's JSON log lines go here instead of stdout


class Summary(BaseModel):
    batch_id: str
    jobs_total: int
    succeeded: int
    failed: int
    deferred: int
    dead_lettered: int
    cancelled: int
    invalid_lines: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    wall_s: float
    jobs_per_s: float
    provider_calls: int
    provider_429s: int | None
    retries: int
    p50_latency_ms: float | None
    p99_latency_ms: float | None
    aws_requests: dict[str, dict[str, int]]
    aws_requests_per_job: float


def effective_config(config: Config, options: LocalOptions, provider_url: str) -> Config:
    """The config the local workers run with: every provider at ``provider_url``."""
    data = config.model_dump(mode="json")
    for provider in data["providers"].values():
        provider["base_url"] = provider_url
        provider["api_key_env"] = "CHATBATCH_API_KEY"
        provider.pop("secret_arn", None)
    for model in data["models"].values():
        model["rpm"] = options.rpm or model["rpm"]
        model["tpm"] = options.tpm or model["tpm"]
    if options.budget_usd is not None:
        data["budget"]["daily_usd"] = str(options.budget_usd)
    if options.priority is not None:
        data["defaults"]["priority"] = options.priority.value
    if options.concurrency is not None:
        for settings in data["priorities"].values():
            settings["max_concurrency"] = options.concurrency
    return Config.model_validate(data)


class AwsCallCounter:
    """Counts AWS API calls by service and operation through botocore's event hooks."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def __call__(self, model: Any, **_: Any) -> None:
        key = (model.service_model.service_name, model.name)
        with self._lock:
            self.calls[key] += 1

    def install(self) -> None:
        boto3.setup_default_session()
        assert boto3.DEFAULT_SESSION is not None
        boto3.DEFAULT_SESSION.events.register("before-call", self)

    def by_service(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (service, op), n in sorted(self.calls.items()):
            out.setdefault(service, {})[op] = n
        return out


@dataclass
class Feeder:
    """Keeps one priority's queue at most ``depth`` deep from a local backlog."""

    priority: Priority
    sender: Sender
    depth: int = FEED_DEPTH
    backlog: deque[Job] = field(default_factory=deque)
    in_queue: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def done(self, n: int) -> None:
        with self.lock:
            self.in_queue = max(0, self.in_queue - n)

    def pump(self) -> bool:
        """Send what fits; True while a backlog remains."""
        while self.backlog:
            with self.lock:
                room = self.depth - self.in_queue
            if room < 10 and self.in_queue:
                return True
            chunk = [self.backlog.popleft() for _ in range(min(10, len(self.backlog)))]
            self.sender.send(self.priority, chunk)
            with self.lock:
                self.in_queue += len(chunk)
        return False


class LocalRuntime:
    """moto + simulator + emulated Lambda, as a context manager."""

    def __init__(self, options: LocalOptions | None = None) -> None:
        self.options = options or LocalOptions()
        self.base_config = load_config(self.options.config_path)
        self.aws_calls = AwsCallCounter()
        self.simulator: Simulator | None = None
        self._stack = ExitStack()
        self.mappings: dict[Priority, EventSourceMapping] = {}
        self.feeders: dict[Priority, Feeder] = {}

    # --- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> LocalRuntime:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for mapping in self.mappings.values():
            mapping.stop()
        self._stack.close()

    def _start(self) -> None:
        options = self.options
        key = os.environ.get("CHATBATCH_API_KEY") or os.environ.get("OPENAI_API_KEY")
        if options.provider_url:
            provider_url = options.provider_url
        else:
            settings = options.simulator or SimulatorSettings(seed=options.seed)
            settings = settings.model_copy(update={"api_key": LOCAL_KEY, "seed": options.seed})
            self.simulator = self._stack.enter_context(Simulator(settings))
            provider_url, key = self.simulator.base_url, LOCAL_KEY
        self.config = effective_config(self.base_config, options, provider_url)
        workdir = Path(self._stack.enter_context(tempfile.TemporaryDirectory()))
        config_file = workdir / "chatbatch.json"
        config_file.write_text(self.config.model_dump_json())
        if options.server:
            self.endpoint: str | None = self._stack.enter_context(moto_server(options.port))
        else:
            self._stack.enter_context(moto_in_process())
            self.endpoint = None
        self.aws_calls.install()
        self.resources = create_resources(self.config, options.visibility_timeout_s)
        env = {
            **self.resources.env(),
            "CHATBATCH_CONFIG": str(config_file),
            "LAMBDA_TASK_ROOT": str(workdir),  # Powertools then keeps one event loop per instance
            "AWS_LAMBDA_FUNCTION_NAME": "chatbatch-worker",
            "POWERTOOLS_METRICS_DISABLED": "true",
            # no X-Ray daemon here; opt in with POWERTOOLS_TRACE_DISABLED=false
            **_trace_env(),
            "POWERTOOLS_LOG_LEVEL": options.log_level,
            "CHATBATCH_API_KEY": key or "",
        }
        self._stack.enter_context(patched_env(env))
        self._stack.enter_context(_worker_logs(options.log_level, options.log_file))
        self._stack.enter_context(_fresh_worker())
        self.store = Store(boto3.client("s3"), self.resources.bucket)
        self.batches = Batches(boto3.client("dynamodb"), self.resources.table)
        self.sender = Sender(boto3.client("sqs"), self.store, self.resources)
        self._start_mappings()

    def _start_mappings(self) -> None:
        from chatbatch.worker import handler as worker_handler

        sqs = boto3.client("sqs")
        worker_settings = self.config.worker
        for priority in Priority:
            url = self.resources.queues[priority]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
            feeder = Feeder(priority, self.sender)
            self.feeders[priority] = feeder
            mapping = EventSourceMapping(
                boto3.client("sqs"),
                worker_handler.handler,
                MappingSettings(
                    queue_url=url,
                    queue_arn=arn["Attributes"]["QueueArn"],
                    max_concurrency=self.config.priorities[priority].max_concurrency,
                    batch_size=worker_settings.batch_size,
                    batch_window_s=min(worker_settings.batch_window_s, 0.2),
                    timeout_s=worker_settings.timeout_s,
                    memory_mb=worker_settings.memory_mb,
                ),
                on_done=feeder.done,
            )
            mapping.start()
            self.mappings[priority] = mapping

    def register_stack(self) -> None:
        """Publish this runtime's resources as the config's CloudFormation stack (in moto),
        so the CLI discovers them exactly as it discovers a deployment."""
        register_stack(self.resources, self.config.stack_name)

    # --- a run -------------------------------------------------------------------

    def submit(self, path: Path, batch_id: str | None = None) -> Plan:
        """Validate, register and queue a file's valid jobs into the feeders' backlogs."""
        config = self.config
        batch = batch_id or self.options.batch_id
        plan = plan_file(path, config, batch, config.defaults.priority)
        register(plan, self.batches, budget_nanos=None)
        write_manifest(path, config, batch, self.store)
        for job in iter_jobs(path, config, batch):
            self.feeders[priority_of(job, plan.default_priority)].backlog.append(job)
        return plan

    def wait(
        self,
        plan: Plan,
        *,
        on_progress: Callable[[BatchInfo], None] | None = None,
        until: Callable[[BatchInfo, Plan], bool] | None = None,
    ) -> BatchInfo:
        """Feed the queues and wait until every job is final or waits for budget (or
        until ``until`` says so)."""
        deadline = time.monotonic() + self.options.timeout_s
        while True:
            backlog = [f.pump() for f in self.feeders.values()]
            info = self.batches.get(plan.batch_id) or BatchInfo(batch_id=plan.batch_id)
            if on_progress:
                on_progress(info)
            if not any(backlog) and (until or _settled)(info, plan):
                return info
            if time.monotonic() > deadline:
                raise TimeoutError(f"batch {plan.batch_id} did not finish in time: {info}")
            time.sleep(POLL_S)

    def run(
        self,
        path: Path,
        out: Path,
        *,
        on_progress: Callable[[BatchInfo, int], None] | None = None,
    ) -> Summary:
        started = time.monotonic()
        plan = self.submit(path)
        info = self.wait(
            plan, on_progress=(lambda i: on_progress(i, plan.valid)) if on_progress else None
        )
        wall = time.monotonic() - started
        return self.write_outputs(path, plan, info, out, wall)

    # --- outputs -----------------------------------------------------------------

    def _outputs(self, path: Path, plan: Plan) -> Iterator[tuple[OutputLine, bool]]:
        """(line, is_result) for every line of the file, in input order."""
        errors = {e.line: e for e in plan.errors}
        lines = iter_jobs(path, self.config, plan.batch_id)
        for number in range(1, plan.lines + 1):
            if number in errors:
                err = errors[number]
                cid = err.custom_id or f"line-{number}"
                yield OutputLine.failure(plan.batch_id, cid, err.code, str(err)), False
                continue
            job = next(lines, None)
            if job is None:
                return
            result = self.store.get_result(plan.batch_id, job.custom_id)
            if result:
                yield result, True
                continue
            error = self.store.get_error(plan.batch_id, job.custom_id)
            yield (
                (
                    error
                    or OutputLine.failure(
                        plan.batch_id,
                        job.custom_id,
                        "deferred",
                        "waiting for budget; it resumes when budget is available",
                    )
                ),
                False,
            )

    def write_outputs(
        self, path: Path, plan: Plan, info: BatchInfo, out: Path, wall: float
    ) -> Summary:
        out.mkdir(parents=True, exist_ok=True)
        latencies: list[int] = []
        retries = 0
        with (out / "results.jsonl").open("w") as results, (out / "errors.jsonl").open("w") as errs:
            for line, ok in self._outputs(path, plan):
                (results if ok else errs).write(line.to_line() + "\n")
                if ok and line.chatbatch:
                    latencies.append(line.chatbatch.latency_ms)
                    retries += max(0, line.chatbatch.attempts - 1)
        self._write_costs(out / "costs.jsonl", plan.batch_id)
        summary = self.summarize(plan, info, wall, latencies, retries)
        (out / "summary.json").write_text(summary.model_dump_json(indent=2) + "\n")
        return summary

    def _write_costs(self, path: Path, batch_id: str) -> None:
        s3 = boto3.client("s3")
        with path.open("w") as costs:
            for page in s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.resources.bucket, Prefix="costs/"
            ):
                for obj in page.get("Contents", []):
                    if f"/{batch_id}/" in obj["Key"]:
                        body = s3.get_object(Bucket=self.resources.bucket, Key=obj["Key"])
                        costs.write(body["Body"].read().decode().strip() + "\n")

    def summarize(
        self, plan: Plan, info: BatchInfo, wall: float, latencies: list[int], retries: int
    ) -> Summary:
        stats = self.simulator.stats() if self.simulator else None
        total = plan.valid + plan.invalid
        aws = self.aws_calls.by_service()
        aws_total = sum(sum(ops.values()) for ops in aws.values())
        return Summary(
            batch_id=plan.batch_id,
            jobs_total=total,
            succeeded=info.succeeded,
            failed=info.failed + plan.invalid,
            deferred=info.deferred,
            dead_lettered=info.dead_lettered,
            cancelled=info.cancelled_jobs,
            invalid_lines=plan.invalid,
            prompt_tokens=info.prompt_tokens,
            completion_tokens=info.completion_tokens,
            cost_usd=float(from_nanos(info.cost_nanos)),
            wall_s=round(wall, 3),
            jobs_per_s=round(total / wall, 2) if wall else 0.0,
            provider_calls=stats.requests if stats else info.provider_calls,
            provider_429s=stats.by_status.get("429", 0) if stats else None,
            retries=retries,
            p50_latency_ms=_percentile(latencies, 50),
            p99_latency_ms=_percentile(latencies, 99),
            aws_requests=aws,
            aws_requests_per_job=round(aws_total / total, 2) if total else 0.0,
        )


def register_stack(resources: Resources, stack_name: str) -> None:
    """A stack whose outputs carry ``resources`` under the deployed stack's output keys."""
    outputs = resources_to_outputs(resources)
    template = {
        "Resources": {"LocalRuntime": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
        "Outputs": {key: {"Value": value} for key, value in outputs.items()},
    }
    with warnings.catch_warnings():  # moto: "WaitConditionHandle ... not supported" (it's a no-op)
        warnings.filterwarnings("ignore", message=".*WaitConditionHandle")
        boto3.client("cloudformation").create_stack(
            StackName=stack_name, TemplateBody=json.dumps(template)
        )


def _settled(info: BatchInfo, plan: Plan) -> bool:
    return info.finished + info.deferred >= plan.valid


def _percentile(values: list[int], pct: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return float(values[0])
    return round(statistics.quantiles(values, n=100, method="inclusive")[pct - 1], 1)


@contextmanager
def _worker_logs(level: str, path: Path | None) -> Iterator[None]:
    """The worker's log level, and its Powertools handler pointed at ``path`` if given."""
    # The worker's Powertools logger, made here if no worker module has made it yet (it adds
    # its handler once per service; a handler made after this point would not be moved).
    Logger(service="chatbatch")
    logger = logging.getLogger("chatbatch")
    logger.setLevel(level)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    streams = [h for h in logger.handlers if isinstance(h, logging.StreamHandler)]
    with path.open("a") as sink:
        saved = [h.setStream(sink) for h in streams]
        try:
            yield
        finally:
            for handler, stream in zip(streams, saved, strict=True):
                if stream is not None:
                    handler.setStream(stream)


def _trace_env() -> dict[str, str]:
    """Tracing is off here (there is no X-Ray daemon) unless the environment turns it on
    as Lambda's would: ``POWERTOOLS_TRACE_DISABLED=false``, ``LAMBDA_TASK_ROOT``,
    ``_X_AMZN_TRACE_ID`` and ``AWS_XRAY_DAEMON_ADDRESS`` set before the process starts
    (how the tracing test runs it)."""
    return {"POWERTOOLS_TRACE_DISABLED": os.environ.get("POWERTOOLS_TRACE_DISABLED", "true")}


@contextmanager
def _fresh_worker() -> Iterator[None]:
    """The worker caches its config per process: drop it so this run's config is read."""
    from chatbatch.worker import services

    services.load_config_cached.cache_clear()
    try:
        yield
    finally:
        services.load_config_cached.cache_clear()
