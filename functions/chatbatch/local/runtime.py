"""`chatbatch local run`: the whole pipeline on this machine.

moto stands in for AWS (in-process for ``run``, its HTTP server for ``up``), the provider
simulator (or ``--provider-url``) for the chat API, and ``EventSourceMapping`` pollers call
the real handler (``chatbatch.worker.handler.handler``) with real SQS events. The jobs go through
``chatbatch.client.submit``, the same code as ``chatbatch submit``, with one difference: each
priority's queue is fed from a backlog (``chatbatch.local.feeder``).

With a state directory (``LocalOptions.state_dir``; ``local run`` keeps one under its
``--out``), the state survives the process: every write is journaled, and the next
runtime on the same directory replays it before its workers start
(``chatbatch.local.journal``). A run of the same file then resumes: the jobs already final
are not sent again, the ones still queued come back from the journal, the others are
sent. ``request_stop`` (Ctrl-C, SIGTERM) ends a run early: the workers stop receiving,
the calls in flight get ``stop_grace_s`` to finish, and ``summary.json`` is written with
the counts so far (``Interrupted``). The answers are on disk as they finish
(``chatbatch.local.live_outputs``).

A run's options are in ``chatbatch.local.options``; the files it writes in
``chatbatch.local.outputs`` and what it reports in ``chatbatch.local.summary``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import boto3
from aws_lambda_powertools import Logger

from chatbatch.client.flush_objects import committed_result
from chatbatch.client.submit import (
    Plan,
    batched_by_lane,
    iter_jobs,
    plan_file,
    register,
    routed_jobs,
    write_manifest,
)
from chatbatch.core import scale
from chatbatch.core.config import Priority, load_config
from chatbatch.core.output_lines import OutputLine
from chatbatch.core.private_files import private_dir, private_open
from chatbatch.core.resources import (
    GATHER_EVENT,
    GATHER_TIMEOUT_S,
    Resources,
    queue_name,
    resources_to_outputs,
)
from chatbatch.core.routing import Override
from chatbatch.local.aws import (
    create_resources,
    moto_in_process,
    moto_server,
    patched_env,
)
from chatbatch.local.emulator import EventSourceMapping, MappingSettings
from chatbatch.local.feeder import Feeder, Unfinished
from chatbatch.local.journal.replay import ReplayReport
from chatbatch.local.journal.state_dir import durable
from chatbatch.local.live_outputs import live_outputs
from chatbatch.local.options import SHARED_KEY_ENV, LocalOptions, effective_config
from chatbatch.local.outputs import Figures, invalid_line, replacing, write_costs, write_results
from chatbatch.local.returns import Returns
from chatbatch.local.schedule import Schedule
from chatbatch.local.simulator import Simulator, SimulatorSettings
from chatbatch.local.summary import AwsCallCounter, Summary, summarize
from chatbatch.local.throttle import ItemThrottle, throttling
from chatbatch.state.batches import Batches, BatchInfo
from chatbatch.state.breaker import Breakers
from chatbatch.state.budget.pause import BudgetPause
from chatbatch.state.queue_switch import TableSwitch
from chatbatch.state.sender import BATCH_LANE, Sender
from chatbatch.state.store import Store, manifest_key

POLL_S = 0.25  # how often the batch's counters are read while waiting
STILL_S = 3.0  # how long only deferred jobs, none running, none due back soon, end a wait
LOCAL_KEY = "sk-local-simulator"
SWITCH_INTERVAL_S = 0.001  # the GIL's hand-over while a local runtime runs (Python: 5 ms)
# the batching window locally, at most: a local run's invocations start without waiting
BATCH_WINDOW_CAP_S = 0.2


class Stopped(Exception):
    """``request_stop`` was called while a run waited."""


class Interrupted(Exception):
    """A run stopped early (``request_stop``); ``summary``: the counts so far, also in
    ``summary.json``."""

    def __init__(self, summary: Summary, running: int) -> None:
        super().__init__(f"stopped with {summary.succeeded} job(s) answered")
        self.summary = summary
        self.running = running  # invocations still under way when the grace ended


class LocalRuntime:
    """moto + simulator + emulated Lambda, as a context manager. ``clock`` is the resume
    schedule's (``chatbatch.local.schedule``): a test moves it past midnight."""

    def __init__(
        self, options: LocalOptions | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.options = options or LocalOptions()
        self.clock = clock
        self.schedule: Schedule | None = None
        self.gatherer: Schedule | None = None  # the batch route's scheduled function
        self.base_config = load_config(self.options.config_path)
        self.aws_calls = AwsCallCounter()
        self.returns = Returns()
        self.simulator: Simulator | None = None
        self._stack = ExitStack()
        self.mappings: dict[Priority, EventSourceMapping] = {}
        self.feeders: dict[Priority, Feeder] = {}
        self.replayed = ReplayReport()  # what the state directory held (nothing: a new run)
        self.kept = 0  # jobs already final when the last run of a file started
        self.stopping = threading.Event()
        self.hurry = threading.Event()  # asked twice: stop without waiting
        self.throttle: ItemThrottle | None = None  # the DynamoDB write limit, if any

    # --- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> LocalRuntime:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for schedule in (self.gatherer, self.schedule):
            if schedule is not None:
                schedule.stop()
        for mapping in self.mappings.values():
            mapping.stop(0.0 if self.stopping.is_set() else None)
        self._stack.close()

    def request_stop(self) -> None:
        """End the run early (Ctrl-C); asked again, without waiting for calls in flight."""
        (self.hurry if self.stopping.is_set() else self.stopping).set()

    def _start(self) -> None:
        options = self.options
        keys: dict[str, str] = {}  # each provider's key comes from its own api_key_env
        if not options.provider_urls:
            settings = options.simulator or SimulatorSettings(seed=options.seed)
            settings = settings.model_copy(update={"api_key": LOCAL_KEY, "seed": options.seed})
            self.simulator = self._stack.enter_context(Simulator(settings))
            keys[SHARED_KEY_ENV] = LOCAL_KEY
        simulator_url = self.simulator.base_url if self.simulator else None
        self.config = effective_config(self.base_config, options, simulator_url)
        workdir = Path(self._stack.enter_context(tempfile.TemporaryDirectory()))
        config_file = workdir / "chatbatch.json"
        config_file.write_text(self.config.model_dump_json())
        if options.server:
            self.endpoint: str | None = self._stack.enter_context(moto_server(options.port))
        else:
            self._stack.enter_context(moto_in_process())
            self.endpoint = None
        self.aws_calls.install()
        self.returns.install()
        self._stack.enter_context(_fine_thread_switches())
        self.resources = create_resources(self.config, options.visibility_timeout_s)
        if options.state_dir is not None:
            self.replayed = self._stack.enter_context(durable(options.state_dir, self.resources))
        if options.throttle_wcu_s is not None:  # after the replay: that is no traffic
            self.throttle = self._stack.enter_context(throttling(options.throttle_wcu_s))
        env = {
            **self.resources.env(),
            "CHATBATCH_CONFIG": str(config_file),
            "LAMBDA_TASK_ROOT": str(workdir),  # Powertools then keeps one event loop per instance
            "AWS_LAMBDA_FUNCTION_NAME": "chatbatch-worker",
            "POWERTOOLS_METRICS_DISABLED": "true",
            # no X-Ray daemon here; opt in with POWERTOOLS_TRACE_DISABLED=false
            **_trace_env(),
            "POWERTOOLS_LOG_LEVEL": options.log_level,
            **keys,
        }
        self._stack.enter_context(patched_env(env))
        sink = sys.stderr if options.log_stderr else None
        self._stack.enter_context(_worker_logs(options.log_level, options.log_file, sink))
        self._stack.enter_context(_fresh_worker())
        self.store = Store(boto3.client("s3"), self.resources.bucket)
        self.batches = Batches(
            boto3.client("dynamodb"),
            self.resources.table,
            counter_shards=scale.plan(self.config).counter_shards,
        )
        self.sender = Sender(boto3.client("sqs"), self.store, self.resources)
        self.pause = BudgetPause(boto3.client("dynamodb"), self.resources.table, cache_s=0)
        self._start_mappings()

    def _start_mappings(self) -> None:
        from chatbatch.batchroute import handler as gatherer_handler
        from chatbatch.worker import handler as worker_handler

        sqs = boto3.client("sqs")
        worker_settings = self.config.worker
        for priority in Priority:
            url = self.resources.queues[priority]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
            feeder = Feeder(priority, self.sender)
            feeder.in_queue = self.replayed.resent[queue_name(self.config.stack_name, priority)]
            self.feeders[priority] = feeder
            mapping = EventSourceMapping(
                boto3.client("sqs"),
                worker_handler.handler,
                MappingSettings(
                    queue_url=url,
                    queue_arn=arn["Attributes"]["QueueArn"],
                    max_concurrency=self.config.priorities[priority].max_concurrency,
                    batch_size=worker_settings.batch_size,
                    batch_window_s=min(worker_settings.batch_window_s, BATCH_WINDOW_CAP_S),
                    timeout_s=worker_settings.timeout_s,
                    memory_mb=worker_settings.memory_mb,
                ),
                on_done=feeder.done,
                switch=TableSwitch(boto3.client("dynamodb"), self.resources.table),
            )
            feeder.on_sent = mapping.wake
            mapping.start()
            self.mappings[priority] = mapping
        self.schedule = Schedule(
            worker_handler.handler,
            self.clock,
            function_name="chatbatch-worker",
            timeout_s=worker_settings.timeout_s,
        )
        self.schedule.start()
        self.gatherer = Schedule(
            gatherer_handler.handler,
            self.clock,
            function_name="chatbatch-gatherer",
            timeout_s=GATHER_TIMEOUT_S,
            event=GATHER_EVENT,
            period_s=self.options.gather_every_s,
        )
        self.gatherer.start()

    def register_stack(self) -> None:
        """Publish this runtime's resources as the config's CloudFormation stack (in moto),
        so the CLI discovers them exactly as it discovers a deployment."""
        register_stack(self.resources, self.config.stack_name)

    # --- a run -------------------------------------------------------------------

    def submit(self, path: Path, batch_id: str | None = None, route: Override = "auto") -> Plan:
        """Validate, register and queue a file's valid jobs: those routed to a provider's
        batch API (``route``: the override, as ``submit --route``) straight to the batch
        route's queue, which no poller reads (the gatherer does), the others into the
        feeders' backlogs. Resumed (the state held a journal), only the jobs still to send
        are queued."""
        config = self.config
        batch = batch_id or self.options.batch_id
        plan = plan_file(path, config, batch, config.defaults.priority, override=route)
        register(plan, self.batches, budget_nanos=None)
        if not (self.replayed.resumed and self.store.get_text(manifest_key(batch)) is not None):
            write_manifest(path, config, batch, self.store, override=route)
        jobs = iter_jobs(path, config, batch)
        unfinished = Unfinished(self.batches, self.replayed.pending_jobs)
        todo = unfinished(jobs) if self.replayed.resumed else jobs
        routed = routed_jobs(todo, config, route, plan.default_priority)
        for lane, chunk in batched_by_lane(routed, plan.default_priority):
            if lane == BATCH_LANE:
                self.sender.send(lane, chunk)
            else:
                self.feeders[lane].backlog.extend(chunk)
        self.kept = unfinished.kept
        return plan

    def wait(
        self,
        plan: Plan,
        *,
        on_progress: Callable[[BatchInfo], None] | None = None,
        until: Callable[[BatchInfo, Plan], bool] | None = None,
    ) -> BatchInfo:
        """Feed the queues and wait until every job is final or waits for its paused
        model, or the pipeline is paused for the day's budget with no invocation under
        way (or until ``until`` says so): jobs deferred for a while (reservations in
        flight) are waited for, and a wait whose jobs are all final or deferred, with none
        running for ``STILL_S`` since the last one deferred for a short while came back
        (``local/returns``; the others wait for a batch's higher limit, or for midnight),
        ends.
        Raises ``Stopped`` once ``request_stop`` was called."""
        deadline = time.monotonic() + self.options.timeout_s
        still_since: float | None = None  # since when only deferred jobs were left, idle
        while not self.stopping.is_set():
            backlog = [f.pump() for f in self.feeders.values()]
            info = self.batches.get(plan.batch_id) or BatchInfo(batch_id=plan.batch_id)
            if on_progress:
                on_progress(info)
            if not any(backlog) and (until or _settled)(info, plan):
                return info
            if until is None and self.budget_paused():
                return info
            if until is None and not any(backlog) and self._only_deferred_idle(info, plan):
                now = time.monotonic()
                still_since = still_since or now
                # still since then, and the last job deferred for a while back as long
                if min(now - still_since, -self.returns.due_in()) > STILL_S:
                    return info
            else:
                still_since = None
            if time.monotonic() > deadline:
                raise TimeoutError(f"batch {plan.batch_id} did not finish in time: {info}")
            self.stopping.wait(POLL_S)
        raise Stopped

    def result(self, batch_id: str, custom_id: str) -> OutputLine | None:
        """A job's committed result (``client/flush_objects.committed_result``)."""
        return committed_result(self.store, self.batches, batch_id, custom_id)

    def run(
        self,
        path: Path,
        out: Path,
        *,
        on_progress: Callable[[BatchInfo, int], None] | None = None,
        route: Override = "auto",
    ) -> Summary:
        """Run a file (``route``: as ``submit --route``); its answers reach ``out`` as they
        finish. Raises ``Interrupted`` when stopped early (``request_stop``)."""
        started = time.monotonic()
        plan = self.submit(path, route=route)
        invalid = [invalid_line(plan.batch_id, err) for err in plan.errors]
        show = (lambda i: on_progress(i, plan.valid)) if on_progress else None
        running: int | None = None  # set when stopped early
        with live_outputs(out, self.resources.bucket, plan.batch_id, invalid, plan.form):
            try:
                info = self.wait(plan, on_progress=show)
            except Stopped:
                running = self.halt_workers()  # their answers still reach the files
        wall = time.monotonic() - started
        if running is None:
            return self.write_outputs(path, plan, info, out, wall)
        info = self.batches.get(plan.batch_id) or BatchInfo(batch_id=plan.batch_id)
        figures = Figures.of_file(out / "results.jsonl")
        summary = self.summarize(plan, info, wall, figures.latencies, figures.retries)
        summary.interrupted = True
        write_summary(out, summary)
        raise Interrupted(summary, running)

    def halt_workers(self) -> int:
        """Stop receiving, and give the invocations under way ``stop_grace_s`` to end
        (less if asked to hurry); returns how many are still running."""
        for mapping in self.mappings.values():
            mapping.halt()
        deadline = time.monotonic() + self.options.stop_grace_s
        while (running := sum(m.running() for m in self.mappings.values())) and not (
            self.hurry.is_set() or time.monotonic() > deadline
        ):
            self.hurry.wait(0.05)
        return running

    def _only_deferred_idle(self, info: BatchInfo, plan: Plan) -> bool:
        """Every job final, deferred or paused, and no invocation under way."""
        waiting = info.finished + info.deferred + info.paused >= plan.valid
        return waiting and not any(m.busy for m in self.mappings.values())

    def budget_paused(self) -> bool:
        """The pipeline is paused for the day's budget, and nothing runs any more."""
        if self.pause.get() is None:
            return False
        return not any(m.enabled() or m.busy for m in self.mappings.values())

    # --- outputs -----------------------------------------------------------------

    def write_outputs(
        self, path: Path, plan: Plan, info: BatchInfo, out: Path, wall: float
    ) -> Summary:
        """The run's files under ``out``: results, errors, costs and ``summary.json``."""
        breakers = Breakers(boto3.client("dynamodb"), self.resources.table)
        paused = {b.model: b for b in breakers.list_open()}
        latencies, retries = write_results(
            path, plan, out, self.config, self.store, self.batches, paused
        )
        write_costs(out / "costs.jsonl", self.resources.bucket, plan.batch_id, self.batches)
        summary = self.summarize(plan, info, wall, latencies, retries)
        write_summary(out, summary)
        return summary

    def summarize(
        self, plan: Plan, info: BatchInfo, wall: float, latencies: list[int], retries: int
    ) -> Summary:
        stats = self.simulator.stats() if self.simulator else None
        aws = self.aws_calls.by_service()
        pause = self.pause.get()
        return summarize(
            plan,
            info,
            wall,
            latencies,
            retries,
            stats=stats,
            aws=aws,
            kept=self.kept,
            paused_until=pause.until if pause else None,
            ddb_throttled=self.throttle.throttled if self.throttle else None,
        )


def write_summary(out: Path, summary: Summary) -> None:
    private_dir(out)
    with replacing(out / "summary.json") as f:
        f.write(summary.model_dump_json(indent=2) + "\n")


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
    """Every job is final or waits for its paused model. A deferred job is not settled: it
    comes back (reservations in flight, a limit raised by a resumed run); a spent day's
    budget ends the wait through ``budget_paused``."""
    return info.finished + info.paused >= plan.valid


@contextmanager
def _worker_logs(level: str, path: Path | None, stream: IO[str] | None = None) -> Iterator[None]:
    """The worker's log level, and its Powertools handler pointed at ``path`` if given,
    else at ``stream`` if given (else it stays on stdout)."""
    # The worker's Powertools logger, made here if no worker module has made it yet (it adds
    # its handler once per service; a handler made after this point would not be moved).
    Logger(service="chatbatch")
    logger = logging.getLogger("chatbatch")
    logger.setLevel(level)
    if path is None and stream is None:
        yield
        return
    with ExitStack() as opened:
        if path is not None:
            private_dir(path.parent)
            stream = opened.enter_context(private_open(path, "a"))
        assert stream is not None
        handlers = [h for h in logger.handlers if isinstance(h, logging.StreamHandler)]
        saved = [h.setStream(stream) for h in handlers]
        try:
            yield
        finally:
            for handler, before in zip(handlers, saved, strict=True):
                if before is not None:
                    handler.setStream(before)


def _trace_env() -> dict[str, str]:
    """Tracing is off here (there is no X-Ray daemon) unless the environment turns it on
    as Lambda's would: ``POWERTOOLS_TRACE_DISABLED=false``, ``LAMBDA_TASK_ROOT``,
    ``_X_AMZN_TRACE_ID`` and ``AWS_XRAY_DAEMON_ADDRESS`` set before the process starts
    (how the tracing test runs it)."""
    return {"POWERTOOLS_TRACE_DISABLED": os.environ.get("POWERTOOLS_TRACE_DISABLED", "true")}


@contextmanager
def _fine_thread_switches() -> Iterator[None]:
    """Every emulated instance, moto and the simulator are threads of this one process
    (on Lambda each instance has its own CPU): a thread that wants the GIL gets it within
    ``SWITCH_INTERVAL_S`` rather than Python's 5 ms, so an instance's send is not held
    behind a dozen others' turns and its sends do not leave bunched (BENCHMARKS 1b). The
    first runtime of the process to start sets it, the last to end puts it back."""
    with _SWITCHES.lock:
        if _SWITCHES.runtimes == 0:
            _SWITCHES.before = sys.getswitchinterval()
            sys.setswitchinterval(SWITCH_INTERVAL_S)
        _SWITCHES.runtimes += 1
    try:
        yield
    finally:
        with _SWITCHES.lock:
            _SWITCHES.runtimes -= 1
            if _SWITCHES.runtimes == 0:
                sys.setswitchinterval(_SWITCHES.before)


@dataclass
class _Switches:
    lock: threading.Lock = field(default_factory=threading.Lock)
    runtimes: int = 0  # local runtimes running in this process
    before: float = 0.005  # the interval before the first of them


_SWITCHES = _Switches()


@contextmanager
def _fresh_worker() -> Iterator[None]:
    """The worker caches its config per process: drop it so this run's config is read."""
    from chatbatch.worker import services

    services.load_config_cached.cache_clear()
    try:
        yield
    finally:
        services.load_config_cached.cache_clear()
