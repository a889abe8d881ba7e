"""Anthropic's Message Batches API (``AnthropicBatches``): ``POST /v1/messages/batches``
``{requests: [{custom_id, params}]}``, ``GET /v1/messages/batches/{id}``, ``GET
/v1/messages/batches`` (newest first, ``limit`` 1-1000, ``after_id`` / ``before_id``),
``POST .../{id}/cancel``, ``GET .../{id}/results`` (JSONL), ``DELETE .../{id}``.

What is refused at once (400 ``invalid_request_error``; 413 ``request_too_large`` past
256 MB): a body other than ``requests``,
no request or more than 100,000, a custom_id outside ``^[a-zA-Z0-9_-]{1,64}$`` or used
twice, ``params`` not an object. Each ``params`` is checked as ``POST /v1/messages``
checks its body, but later, when its line runs (Anthropic validates params
asynchronously): a body it refuses is an ``errored`` result, not billed; so is ``stream``
(not supported in a batch). Answered lines are ``succeeded`` with the Message the
synchronous endpoint answers (billed as batch work); the lines a cancel or the expiry
stop are ``canceled`` / ``expired``, an admin's failure leaves them ``errored``
(``api_error``). ``processing_status`` goes ``in_progress`` -> (``canceling``) -> ``ended``;
as Anthropic documents, ``request_counts`` hold every request as ``processing`` until the
batch has ended, and ``results_url`` is set then (on this server's own address); a batch
is deleted only once ended. Times are RFC 3339 (UTC) of the engine's clock.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chatbatch.local.simulator.api import load_body
from chatbatch.local.simulator.batch_progress import Phase, Run
from chatbatch.local.simulator.messages import AnthropicError, invalid
from chatbatch.local.simulator.settings import SimulatorSettings

MAX_REQUESTS = 100_000
MAX_BYTES = 256 * 1024 * 1024
CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
PROCESSING = {Phase.in_progress: "in_progress", Phase.finalizing: "in_progress"}
PROCESSING[Phase.cancelling] = "canceling"
UNRUN = {Phase.cancelled: "canceled", Phase.expired: "expired", Phase.failed: "errored"}
Answer = Callable[[Any], tuple[int, dict[str, Any]]]


@dataclass
class _Batch:
    id: str
    requests: list[tuple[str, Any]]  # (custom_id, params)
    created: float
    run: Run
    results: list[dict[str, Any]] = field(default_factory=list)


def _check_create(payload: Any, max_requests: int) -> list[tuple[str, Any]]:
    if not isinstance(payload, dict):
        raise invalid("There was an issue with your request body: not a JSON object")
    for key in sorted(set(payload) - {"requests"}):
        raise invalid(f"{key}: Extra inputs are not permitted")
    requests = payload.get("requests")
    if not isinstance(requests, list) or not requests:
        raise invalid("requests: List should have at least 1 item after validation, not 0")
    if len(requests) > max_requests:
        raise invalid(
            f"requests: List should have at most {max_requests} items after validation, "
            f"not {len(requests)}"
        )
    seen: set[str] = set()
    checked = []
    for index, request in enumerate(requests):
        where = f"requests.{index}"
        if not isinstance(request, dict):
            raise invalid(f"{where}: Input should be a valid dictionary")
        for key in sorted(set(request) - {"custom_id", "params"}):
            raise invalid(f"{where}.{key}: Extra inputs are not permitted")
        custom_id = request.get("custom_id")
        if not isinstance(custom_id, str) or not CUSTOM_ID.fullmatch(custom_id):
            raise invalid(
                f"{where}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
            )
        if custom_id in seen:
            raise invalid(
                f"{where}.custom_id: Duplicate custom_id '{custom_id}'; each request in a "
                "batch needs its own custom_id"
            )
        seen.add(custom_id)
        if not isinstance(request.get("params"), dict):
            raise invalid(f"{where}.params: Input should be a valid dictionary")
        checked.append((custom_id, request["params"]))
    return checked


def _rfc3339(unix: float) -> str:
    moment = dt.datetime.fromtimestamp(unix, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AnthropicBatches:
    """The message batches, by id; ``answer`` runs one request's params."""

    def __init__(
        self,
        answer: Answer,
        settings: Callable[[], SimulatorSettings],
        unix: Callable[[float], float],
    ) -> None:
        self._answer, self._settings, self._unix = answer, settings, unix
        self._batches: dict[str, _Batch] = {}

    # -- the API ----------------------------------------------------------------------

    def create(self, raw: bytes, now: float, host: str) -> dict[str, Any]:
        if len(raw) > MAX_BYTES:
            raise AnthropicError(413, f"Request exceeds the maximum size of {MAX_BYTES} bytes")
        requests = _check_create(load_body(raw), MAX_REQUESTS)
        batch_id = "msgbatch_01" + uuid.uuid4().hex[:22]
        run = Run.start(now, len(requests), self._settings())
        run.finalize_s = 0.0  # Anthropic's batch ends when its last request does
        self._batches[batch_id] = _Batch(batch_id, requests, now, run)
        return self.get(batch_id, now, host)

    def get(self, batch_id: str, now: float, host: str) -> dict[str, Any]:
        batch = self._find(batch_id)
        self._advance(batch, now)
        return self._body(batch, now, host)

    def page(self, query: dict[str, str], now: float, host: str) -> dict[str, Any]:
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            raise invalid("limit: Input should be greater than or equal to 1 and at most 1000")
        ids = list(reversed(self._batches))  # newest first
        after, before = query.get("after_id"), query.get("before_id")
        # (a cursor it does not know, such as a batch deleted since, is ignored: the
        # list starts over from the newest, which a client must not take for more)
        if after in ids:  # the page just after (older than) that batch
            ids = ids[ids.index(after) + 1 :]
        if before in ids:  # the ``limit`` batches just before (newer than) it
            newer = ids[: ids.index(before)]
            shown, more = newer[-limit:], len(newer) > limit
        else:
            shown, more = ids[:limit], len(ids) > limit
        page = [self.get(i, now, host) for i in shown]
        return {
            "data": page,
            "has_more": more,  # in the direction asked for, as Anthropic documents
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
        }

    def cancel(self, batch_id: str, now: float, host: str) -> dict[str, Any]:
        batch = self._find(batch_id)
        self._advance(batch, now)
        if batch.run.ended is not None:
            raise invalid(f"Message batch {batch_id} has already ended and cannot be canceled.")
        batch.run.cancel(now)
        return self.get(batch_id, now, host)

    def results(self, batch_id: str, now: float) -> bytes:
        batch = self._find(batch_id)
        self._advance(batch, now)
        if batch.run.ended is None:
            raise invalid(f"Message batch {batch_id} has not ended yet; its results are not ready.")
        return b"".join(json.dumps(r).encode() + b"\n" for r in batch.results)

    def delete(self, batch_id: str, now: float) -> dict[str, Any]:
        batch = self._find(batch_id)
        self._advance(batch, now)
        if batch.run.ended is None:
            raise invalid(
                f"Message batch {batch_id} cannot be deleted while it is processing; cancel "
                "it first."
            )
        del self._batches[batch_id]
        return {"id": batch_id, "type": "message_batch_deleted"}

    def force(self, batch_id: str, action: str, now: float, host: str) -> dict[str, Any]:
        """The admin's ``expire`` or ``fail`` of a batch still running."""
        batch = self._find(batch_id)
        if batch.run.ended is not None:
            raise invalid(f"Message batch {batch_id} has already ended.")
        if action == "expire":
            batch.run.expire_now(now, self._line_answerer(batch))
        else:
            batch.run.fail_now(now, self._line_answerer(batch))
        self._settle(batch)
        return self._body(batch, now, host)

    def advance(self, now: float) -> None:
        for batch in self._batches.values():
            self._advance(batch, now)

    # -- running ----------------------------------------------------------------------

    def _find(self, batch_id: str) -> _Batch:
        batch = self._batches.get(batch_id)
        if batch is None:
            raise AnthropicError(404, f"message_batch {batch_id} not found")
        return batch

    def _line_answerer(self, batch: _Batch) -> Callable[[int], None]:
        def answer(index: int) -> None:
            custom_id, params = batch.requests[index]
            if params.get("stream"):
                refused = invalid("stream: streaming is not supported in a message batch")
                status, body = refused.status, refused.body()
            else:
                status, body = self._answer(params)
            result = (
                {"type": "succeeded", "message": body}
                if status == 200
                else {"type": "errored", "error": body}
            )
            batch.results.append({"custom_id": custom_id, "result": result})

        return answer

    def _advance(self, batch: _Batch, now: float) -> None:
        if batch.run.ended is None:
            batch.run.advance(now, self._line_answerer(batch))
            self._settle(batch)

    def _settle(self, batch: _Batch) -> None:
        """Once ended, the requests never run get their ``canceled`` / ``expired`` result."""
        run = batch.run
        if run.ended is None or len(batch.results) == run.count:
            return
        kind = UNRUN[run.ended]
        for custom_id, _ in batch.requests[run.answered :]:
            result: dict[str, Any] = {"type": kind}
            if kind == "errored":
                failure = AnthropicError(500, "Internal server error (simulated batch failure)")
                result["error"] = failure.body()
            batch.results.append({"custom_id": custom_id, "result": result})

    # -- the MessageBatch object ------------------------------------------------------

    def _body(self, batch: _Batch, now: float, host: str) -> dict[str, Any]:
        run = batch.run
        kinds = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if run.ended is None:
            kinds["processing"] = run.count  # Anthropic tallies only once the batch ends
        else:
            for item in batch.results:
                kinds[item["result"]["type"]] += 1
        ended = run.ended is not None and run.ended_at is not None
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": "ended" if ended else PROCESSING[run.phase(now)],
            "request_counts": kinds,
            "ended_at": _rfc3339(self._unix(run.ended_at)) if run.ended_at is not None else None,
            "created_at": _rfc3339(self._unix(batch.created)),
            "expires_at": _rfc3339(self._unix(run.expire_at)),
            "archived_at": None,
            "cancel_initiated_at": (
                _rfc3339(self._unix(run.cancel_at)) if run.cancel_at is not None else None
            ),
            "results_url": f"http://{host}/v1/messages/batches/{batch.id}/results"
            if ended and host
            else None,
        }
