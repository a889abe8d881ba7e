"""Where a job's time goes: per-job stage timings, from wrappers put around the pipeline.

Nothing in product code changes: while ``Stages.installed()`` is active, the worker's
handler, ``process`` and a few steps of ``chatbatch.worker.pipeline`` are wrapped so that each
job's moments are recorded (wall clock, epoch seconds, comparable with SQS's
``SentTimestamp``):

queue wait (sent -> handler called), intake (decode, prefetch the states), before budget
(idempotency, cache), budget (reserve), limiter (capacity), call (the provider), S3
(result + cost record), counters (the settle transaction), and after the result (the
handler's tail: give-backs, metrics; not part of queue-to-result).
"""

from __future__ import annotations

import functools
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from bench._common import patched, percentile, watched
from chatbatch.state.batches import Batches, JobState
from chatbatch.worker import handler as worker
from chatbatch.worker import invocation, pipeline, results

STAGES = (
    "queue wait",
    "intake",
    "before budget",
    "budget",
    "limiter",
    "call",
    "S3",
    "counters",
)


@dataclass
class Stages:
    """``moments[custom_id][name]`` = epoch seconds; ``spans`` add up repeated steps."""

    moments: defaultdict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    spans: defaultdict[str, defaultdict[str, float]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(float))
    )
    _messages: defaultdict[str, dict[str, float]] = field(
        default_factory=lambda: defaultdict(dict)
    )  # message id -> sent, handler, end
    _message_of: dict[str, str] = field(default_factory=dict)  # custom_id -> message id
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _mark(self, cid: str, name: str, at: float | None = None) -> None:
        with self._lock:
            self.moments[cid].setdefault(name, time.time() if at is None else at)

    def _span(self, cid: str, name: str, seconds: float) -> None:
        with self._lock:
            self.spans[cid][name] += seconds

    # --- the wrappers ------------------------------------------------------------

    def _before(self, n: int, event: dict[str, Any]) -> None:
        now = time.time()
        with self._lock:
            for record in event.get("Records", []):
                sent = int(record["attributes"].get("SentTimestamp") or 0) / 1000
                self._messages[record["messageId"]] = {"sent": sent, "handler": now}

    def _after(self, n: int, event: dict[str, Any]) -> None:
        end = time.time()
        with self._lock:
            for record in event.get("Records", []):
                self._messages[record["messageId"]]["end"] = end

    def _process(self, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        async def process(inv: Any, intake: Any) -> Any:
            cid, message = intake.custom_id, intake.record.message_id
            with self._lock:
                found = dict(self._messages.get(message, {}))
                self._message_of[cid] = message
            if found:
                self._mark(cid, "sent", found["sent"])
                self._mark(cid, "handler", found["handler"])
            self._mark(cid, "process")
            return await original(inv, intake)

        return process

    def _timed(self, name: str, original: Callable[..., Any], arg: int = 1) -> Callable[..., Any]:
        """An async step whose ``arg``-th positional argument is the job's intake."""

        @functools.wraps(original)
        async def step(*args: Any, **kwargs: Any) -> Any:
            cid = args[arg].custom_id
            self._mark(cid, name)
            started = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                self._span(cid, name, time.perf_counter() - started)

        return step

    def _transition(self, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def transition(batches: Any, batch_id: str, custom_id: str, **kwargs: Any) -> Any:
            if kwargs.get("new") is not JobState.succeeded:
                return original(batches, batch_id, custom_id, **kwargs)
            self._mark(custom_id, "counters")
            try:
                return original(batches, batch_id, custom_id, **kwargs)
            finally:
                self._mark(custom_id, "counters end")

        return transition

    @contextmanager
    def installed(self) -> Iterator[Stages]:
        with (
            watched(self._before, self._after),
            patched(
                (worker, "process", self._process(vars(worker)["process"])),
                (pipeline, "_reserve", self._timed("budget", pipeline._reserve)),
                (pipeline, "_call", self._timed("call", pipeline._call)),
                (results, "finish", self._timed("S3", results.finish)),
                (
                    invocation.Invocation,
                    "take_capacity",
                    self._timed("limiter", invocation.Invocation.take_capacity),
                ),
                (Batches, "transition", self._transition(Batches.transition)),
            ),
        ):
            yield self

    # --- the figures -------------------------------------------------------------

    def per_job(self) -> dict[str, dict[str, float]]:
        """Seconds per stage for every job that reached its settle, plus totals."""
        out: dict[str, dict[str, float]] = {}
        for cid, m in self.moments.items():
            if "counters end" not in m or "sent" not in m:
                continue
            end = self._messages.get(self._message_of.get(cid, ""), {}).get("end")
            spans = self.spans[cid]
            limiter = spans["limiter"]
            out[cid] = {
                "queue wait": m["handler"] - m["sent"],
                "intake": m["process"] - m["handler"],
                "before budget": m["budget"] - m["process"],
                "budget": spans["budget"],
                "limiter": limiter,
                "call": spans["call"] - limiter,
                "S3": m["counters"] - m["S3"],
                "counters": m["counters end"] - m["counters"],
                "queue to result": m["counters end"] - m["sent"],
                "after the result": end - m["counters end"] if end else float("nan"),
            }
            out[cid]["outside the call"] = out[cid]["queue to result"] - out[cid]["call"]
        return out

    def summary(self) -> list[tuple[str, float, float, float]]:
        """(stage, p50 ms, p99 ms, mean ms) over every job."""
        jobs = list(self.per_job().values())
        names = [*STAGES, "queue to result", "outside the call", "after the result"]
        rows = []
        for name in names:
            values = [j[name] * 1000 for j in jobs]
            mean = sum(values) / len(values) if values else float("nan")
            rows.append((name, percentile(values, 50), percentile(values, 99), mean))
        return rows
