"""OpenAI's Batches API (``OpenAIBatches``): ``POST /v1/batches`` over an uploaded file of
purpose ``batch`` (endpoint ``/v1/chat/completions``, completion window ``24h``, metadata
of at most 16 keys), ``GET /v1/batches/{id}``, ``GET /v1/batches`` (newest first, ``limit``
1-100, ``after``), ``POST /v1/batches/{id}/cancel``.

A batch answers ``validating`` when created; its file is read at once (``read_lines``): a
bad file makes it ``failed`` with ``errors.data``, otherwise it is ``in_progress`` and its
lines are answered over the run (``Run``), each exactly as ``POST /v1/chat/completions``
answers the same body (the engine's ``answer``, which bills it as batch work), then
``finalizing`` and ``completed``; a cancel makes it ``cancelling`` then ``cancelled``, its
window running out ``expired``. ``request_counts`` move as lines are answered; ``usage``
sums the answered lines' usage. When it ends, the answered lines are published: a 200 in
the output file, a refused body (its 4xx as ``response``) in the error file, with the lines
never run (``batch_cancelled`` / ``batch_expired`` as ``error``, not billed; counted as
failed). Timestamps are Unix seconds of the engine's clock.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chatbatch.local.simulator.api import ApiError, invalid, load_body
from chatbatch.local.simulator.batch_files import FileStore
from chatbatch.local.simulator.batch_progress import Phase, Run
from chatbatch.local.simulator.openai_batch_lines import MAX_LINES, Line, read_lines
from chatbatch.local.simulator.settings import SimulatorSettings

ENDPOINTS = ("/v1/chat/completions",)  # of OpenAI's batch endpoints, the one simulated
UNRUN = {
    Phase.cancelled: ("batch_cancelled", "This request was not executed: the batch was cancelled."),
    Phase.expired: (
        "batch_expired",
        "This request could not be executed before the completion window expired.",
    ),
}
STATUS = {Phase.cancelled: "cancelled", Phase.expired: "expired", Phase.failed: "failed"}
STATUS |= {p: p.value for p in (Phase.in_progress, Phase.finalizing, Phase.completed)}
STATUS[Phase.cancelling] = "cancelling"
Answer = Callable[[Any], tuple[int, dict[str, Any]]]


@dataclass
class _Batch:
    id: str
    input_file_id: str
    endpoint: str
    metadata: dict[str, str] | None
    created: float
    lines: list[Line]
    model: str | None
    errors: list[dict[str, Any]]
    run: Run | None
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    failed_lines: int = 0
    usage: dict[str, int] = field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None


def _add_usage(total: dict[str, int], usage: dict[str, Any]) -> None:
    details = usage.get("completion_tokens_details") or {}
    for key, value in (
        ("input_tokens", usage.get("prompt_tokens", 0)),
        ("cached_tokens", (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)),
        ("output_tokens", usage.get("completion_tokens", 0)),
        ("reasoning_tokens", details.get("reasoning_tokens", 0)),
        ("total_tokens", usage.get("total_tokens", 0)),
    ):
        total[key] = total.get(key, 0) + int(value)


def _check_create(payload: Any) -> tuple[str, str, dict[str, str] | None]:
    if not isinstance(payload, dict):
        raise invalid("We could not parse the JSON body of your request.", None)
    for name in ("input_file_id", "endpoint", "completion_window"):
        if not isinstance(payload.get(name), str):
            raise invalid(
                f"Missing required parameter: '{name}'.", name, "missing_required_parameter"
            )
    if payload["endpoint"] not in ENDPOINTS:
        raise invalid(
            f"Invalid value for 'endpoint': '{payload['endpoint']}'. The simulator supports "
            "'/v1/chat/completions'.",
            "endpoint",
            "invalid_value",
        )
    if payload["completion_window"] != "24h":
        raise invalid(
            f"Invalid value for 'completion_window': '{payload['completion_window']}'. "
            "Supported values are: '24h'.",
            "completion_window",
            "invalid_value",
        )
    metadata = payload.get("metadata")
    if metadata is not None and not (
        isinstance(metadata, dict)
        and len(metadata) <= 16
        and all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
            for k, v in metadata.items()
        )
    ):
        raise invalid(
            "Invalid 'metadata': at most 16 pairs, keys of at most 64 characters and string "
            "values of at most 512.",
            "metadata",
            "invalid_value",
        )
    return payload["input_file_id"], payload["endpoint"], metadata


class OpenAIBatches:
    """The batches, by id, over the file store; ``answer`` runs one line's body."""

    def __init__(
        self,
        files: FileStore,
        answer: Answer,
        settings: Callable[[], SimulatorSettings],
        unix: Callable[[float], int],
    ) -> None:
        self.files, self._answer, self._settings, self._unix = files, answer, settings, unix
        self._batches: dict[str, _Batch] = {}

    # -- the API ----------------------------------------------------------------------

    def create(self, raw: bytes, now: float) -> dict[str, Any]:
        file_id, endpoint, metadata = _check_create(load_body(raw))
        source = self.files.get(file_id)
        if source.purpose != "batch":
            raise invalid(f"File {file_id} was not uploaded with purpose 'batch'.", "input_file_id")
        lines, model, errors = read_lines(source.data, endpoint, MAX_LINES)
        run = None if errors else Run.start(now, len(lines), self._settings())
        batch = _Batch(
            "batch_" + uuid.uuid4().hex, file_id, endpoint, metadata, now, lines, model, errors, run
        )
        self._batches[batch.id] = batch
        return self._body(batch, now) | {"status": "validating", "in_progress_at": None}

    def get(self, batch_id: str, now: float) -> dict[str, Any]:
        return self._body(self._find(batch_id), now)

    def page(self, query: dict[str, str], now: float) -> dict[str, Any]:
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            raise invalid("Invalid 'limit': expected an integer from 1 to 100.", "limit")
        ids = list(reversed(self._batches))
        after = query.get("after")
        if after is not None:
            ids = ids[ids.index(after) + 1 :] if after in ids else []
        page = [self._body(self._batches[i], now) for i in ids[:limit]]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(ids) > limit,
        }

    def cancel(self, batch_id: str, now: float) -> dict[str, Any]:
        batch = self._find(batch_id)
        if batch.run is None or batch.run.phase(now) is not Phase.in_progress:
            status = self._body(batch, now)["status"]
            raise invalid(f"Cannot cancel a batch with status '{status}'.", None)
        batch.run.cancel(now)
        self._advance(batch, now)
        return self._body(batch, now)

    def force(self, batch_id: str, action: str, now: float) -> dict[str, Any]:
        """The admin's ``expire`` or ``fail`` of a batch still running."""
        batch = self._find(batch_id)
        if batch.run is None or batch.run.ended is not None:
            raise invalid(f"Batch {batch_id} has already ended.", None)
        answer = self._line_answerer(batch)
        if action == "expire":
            batch.run.expire_now(now, answer)
        else:
            batch.run.fail_now(now, answer)
            batch.errors = [
                {
                    "code": "server_error",
                    "message": "The batch failed (simulated).",
                    "param": None,
                    "line": None,
                }
            ]
        self._settle(batch)
        return self._body(batch, now)

    def advance(self, now: float) -> None:
        for batch in self._batches.values():
            self._advance(batch, now)

    # -- running ----------------------------------------------------------------------

    def _find(self, batch_id: str) -> _Batch:
        batch = self._batches.get(batch_id)
        if batch is None:
            raise ApiError(404, f"No batch found with id '{batch_id}'.", param="batch_id")
        return batch

    def _line_answerer(self, batch: _Batch) -> Callable[[int], None]:
        def answer(index: int) -> None:
            line = batch.lines[index]
            status, body = self._answer(line.body)
            response = {"status_code": status, "request_id": uuid.uuid4().hex, "body": body}
            batch.outcomes.append(
                {
                    "id": "batch_req_" + uuid.uuid4().hex,
                    "custom_id": line.custom_id,
                    "response": response,
                    "error": None,
                }
            )
            if status == 200:
                _add_usage(batch.usage, body.get("usage") or {})
            else:
                batch.failed_lines += 1

        return answer

    def _advance(self, batch: _Batch, now: float) -> None:
        if batch.run is not None and batch.run.ended is None:
            batch.run.advance(now, self._line_answerer(batch))
            self._settle(batch)

    def _settle(self, batch: _Batch) -> None:
        """Publish the output and error files once the run has ended."""
        run = batch.run
        if run is None or run.ended is None or batch.output_file_id or batch.error_file_id:
            return
        done = [o for o in batch.outcomes if o["response"]["status_code"] == 200]
        errors = [o for o in batch.outcomes if o["response"]["status_code"] != 200]
        if run.ended in UNRUN:
            code, message = UNRUN[run.ended]
            for line in batch.lines[run.answered :]:
                errors.append(
                    {
                        "id": "batch_req_" + uuid.uuid4().hex,
                        "custom_id": line.custom_id,
                        "response": None,
                        "error": {"code": code, "message": message},
                    }
                )
            batch.failed_lines += run.count - run.answered
        moment = self._unix(run.ended_at or run.started)
        if done:
            batch.output_file_id = self._publish(batch, "output", done, moment)
        if errors:
            batch.error_file_id = self._publish(batch, "error", errors, moment)

    def _publish(self, batch: _Batch, kind: str, lines: list[dict[str, Any]], at: int) -> str:
        data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        return self.files.add(f"batch_{batch.id}_{kind}.jsonl", "batch_output", data, at).id

    # -- the Batch object -------------------------------------------------------------

    def _body(self, batch: _Batch, now: float) -> dict[str, Any]:
        self._advance(batch, now)
        run, unix = batch.run, self._unix
        times: dict[str, int | None] = dict.fromkeys(
            (
                "in_progress_at",
                "finalizing_at",
                "completed_at",
                "failed_at",
                "expired_at",
                "cancelling_at",
                "cancelled_at",
            )
        )
        if run is None:
            status = "failed"
            times["failed_at"] = unix(batch.created)
        else:
            phase = run.phase(now)
            status = STATUS[phase]
            times["in_progress_at"] = unix(run.started)
            if run.answered == run.count and run.count:
                times["finalizing_at"] = unix(run.due(run.count - 1))
            if run.cancel_at is not None:
                times["cancelling_at"] = unix(run.cancel_at)
            if run.ended is not None and run.ended_at is not None:
                times[f"{status}_at"] = unix(run.ended_at)
        succeeded = sum(1 for o in batch.outcomes if o["response"]["status_code"] == 200)
        counts = {
            "total": len(batch.lines) if run else 0,
            "completed": succeeded,
            "failed": batch.failed_lines,
        }
        usage = batch.usage
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": batch.endpoint,
            "model": batch.model,
            "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
            "input_file_id": batch.input_file_id,
            "completion_window": "24h",
            "status": status,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "created_at": unix(batch.created),
            "expires_at": unix(run.expire_at) if run else None,
            **times,
            "request_counts": counts,
            "usage": {
                "input_tokens": usage.get("input_tokens", 0),
                "input_tokens_details": {"cached_tokens": usage.get("cached_tokens", 0)},
                "output_tokens": usage.get("output_tokens", 0),
                "output_tokens_details": {"reasoning_tokens": usage.get("reasoning_tokens", 0)},
                "total_tokens": usage.get("total_tokens", 0),
            },
            "metadata": batch.metadata,
        }
