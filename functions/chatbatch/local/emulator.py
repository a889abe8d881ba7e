"""An event-source emulator: calls the real Lambda handler the way Lambda's SQS event
source mapping does.

Per queue, up to ``max_concurrency`` pollers (each one a Lambda instance: its own thread,
so the handler's per-instance state is reused across its invocations, as in Lambda). Like
Lambda's, the mapping scales with the queue: while the queue is empty one poller polls
(backing off to once a second) and the others wait; each poller that receives messages
starts one more. ``wake`` (the local run's feeder calls it after a send) ends the polling
poller's back-off at once, as SQS long polling returns when a message arrives; producers
outside the process are seen within the back-off (a second at most). A poller receives up
to ``batch_size`` messages (ten a receive, as SQS hands them), waits up to the batching
window to fill the batch, builds a real SQS-shaped event, calls the handler with
a context whose remaining time counts down from the function timeout, then deletes the
messages the partial batch response did not report as failed. Failed messages stay in
the queue and come back when their visibility timeout ends; after ``maxReceiveCount``
receives SQS (moto) moves them to the DLQ.

Like a disabled mapping, the pollers receive nothing while the queue switch
(``chatbatch.state.queue_switch``, the one the worker turns off when the day's budget is
spent) is off; the invocations under way run on.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger

from chatbatch.core.sqs_records import sqs_record
from chatbatch.state.queue_switch import QueueSwitch
from chatbatch.worker.crash import WorkerCrash

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageTypeDef

Handler = Callable[[dict[str, Any], Any], Any]
IDLE_RECHECK_S = 5.0  # a waiting poller polls again this often even if nobody woke it
IDLE_POLL_MAX_S = 1.0  # the polling poller of an empty queue backs off to this
SWITCHED_OFF_S = 0.25  # a poller of a switched-off mapping looks at the switch this often
SQS_MAX_RECEIVE = 10  # messages one ReceiveMessage (and one DeleteMessageBatch) takes
logger = Logger(service="chatbatch-local")


@dataclass
class LambdaContext:
    """What Lambda hands the handler; the remaining time counts down from the timeout."""

    function_name: str
    timeout_s: float
    memory_limit_in_mb: int = 512
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    started: float = field(default_factory=time.monotonic)

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}"

    @property
    def function_version(self) -> str:
        return "$LATEST"

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    @property
    def log_stream_name(self) -> str:
        return "local"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.timeout_s - (time.monotonic() - self.started)) * 1000))


@dataclass
class MappingSettings:
    queue_url: str
    queue_arn: str
    max_concurrency: int
    batch_size: int = 10
    batch_window_s: float = 0.0
    timeout_s: float = 120.0
    memory_mb: int = 512
    function_name: str = "chatbatch-worker"


class EventSourceMapping:
    """Pollers for one queue, calling ``handler`` with SQS events."""

    def __init__(
        self,
        sqs: SQSClient,
        handler: Handler,
        settings: MappingSettings,
        *,
        on_done: Callable[[int], None] | None = None,
        switch: QueueSwitch | None = None,
    ) -> None:
        self._sqs = sqs
        self._switch = switch
        self._handler = handler
        self.settings = settings
        self._on_done = on_done
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.invocations = 0
        self.busy = 0  # invocations under way
        self._lock = threading.Lock()
        self._idle = threading.Condition()  # pollers wait on it while the queue is empty
        self._sent = threading.Event()  # a message was sent: the polling poller polls now
        self._polling_empty = 0  # pollers polling an empty queue (one is enough)

    def start(self) -> None:
        for i in range(self.settings.max_concurrency):
            name = f"{self.settings.queue_arn.rsplit(':', 1)[-1]}-{i}"
            thread = threading.Thread(target=self._poll, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def wake(self) -> None:
        """Messages were just sent to the queue: the poller backing off polls at once."""
        self._sent.set()

    def halt(self) -> None:
        """Receive no more; the invocations under way run on."""
        self._stop.set()
        self._sent.set()
        with self._idle:
            self._idle.notify_all()

    def running(self) -> int:
        """Pollers still running (after ``halt``: those in an invocation)."""
        return sum(thread.is_alive() for thread in self._threads)

    def stop(self, timeout_s: float | None = None) -> None:
        """Halt, and wait for the invocations under way (at most ``timeout_s`` in all;
        default: the function timeout)."""
        self.halt()
        wait_s = self.settings.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + wait_s
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def _receive(self) -> list[MessageTypeDef]:
        s = self.settings
        messages: list[MessageTypeDef] = []
        window_end = time.monotonic() + s.batch_window_s
        while len(messages) < s.batch_size and not self._stop.is_set():
            got = self._sqs.receive_message(
                QueueUrl=s.queue_url,
                MaxNumberOfMessages=min(SQS_MAX_RECEIVE, s.batch_size - len(messages)),
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            messages.extend(got)
            if not got or time.monotonic() >= window_end:
                break
        return messages

    def _poll(self) -> None:
        idle = 0.02
        while not self._stop.is_set():
            if not self.enabled():
                self._stop.wait(SWITCHED_OFF_S)
                continue
            messages = self._receive()
            if messages:
                idle = 0.02
                with self._idle:
                    self._idle.notify()  # the queue has messages: one more poller
                self._invoke(messages)
            elif self._wait_for_work():
                idle = 0.02
            else:
                if self._sent.wait(idle):
                    self._sent.clear()
                    idle = 0.02
                else:
                    idle = min(idle * 2, IDLE_POLL_MAX_S)
                with self._idle:
                    self._polling_empty -= 1

    def enabled(self) -> bool:
        """Whether the mapping receives (its queue switch is on, or it has none)."""
        return self._switch is None or self._switch.enabled()

    def _wait_for_work(self) -> bool:
        """The queue was empty: wait while another poller polls it (True), or be the one
        that polls (False: the caller backs off, then polls again)."""
        with self._idle:
            if self._polling_empty == 0:
                self._polling_empty += 1
                return False
            self._idle.wait(timeout=IDLE_RECHECK_S)
            return True

    def _invoke(self, messages: list[MessageTypeDef]) -> None:
        s = self.settings
        region = s.queue_arn.split(":")[3]
        event = {"Records": [sqs_record(m, s.queue_arn, region) for m in messages]}
        context = LambdaContext(s.function_name, s.timeout_s, s.memory_mb)
        with self._lock:
            self.invocations += 1
            self.busy += 1
        try:
            response = self._handler(event, context) or {}
            failed = {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
        except (Exception, WorkerCrash) as err:
            # Like a Lambda that raised, timed out or died: nothing is deleted, every
            # message of the batch comes back after its visibility timeout.
            logger.warning(f"invocation failed, its batch returns to the queue: {err!r}")
            return
        finally:
            with self._lock:
                self.busy -= 1
        done = [m for m in messages if m["MessageId"] not in failed]
        for start in range(0, len(done), SQS_MAX_RECEIVE):
            chunk = done[start : start + SQS_MAX_RECEIVE]
            self._sqs.delete_message_batch(
                QueueUrl=s.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)
                ],
            )
        if self._on_done and done:
            self._on_done(len(done))
