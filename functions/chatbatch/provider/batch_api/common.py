"""What both providers' batch clients share: a provider batch to create (``BatchPart``),
its state (``BatchState``), each job's outcome (``JobOutcome``), their errors, and the
protocol the scheduled function drives (``BatchApi``).

A job's outcome is one of three:

- ``succeeded``: the provider's answer (a chat.completion, or an Anthropic Message: the
  worker stores it as it stores a synchronous answer, ``worker.batch_jobs.stored``), with
  the usage the provider billed (None when the line carried none);
- ``failed``: the API refused the line for good (a 4xx it gave that line: the same body
  would be refused synchronously), with the provider's status, message and error body;
- ``retry_sync``: the line did not run, or failed for a reason that may pass (expired,
  cancelled, a batch that failed, a 5xx or an ``api_error``, no result line at all): the
  job goes back to the synchronous path if its deadline still allows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from chatbatch.core.jobs import Job
from chatbatch.core.pricing import Usage
from chatbatch.provider.batch_api.custom_ids import CustomIds

BatchApiKind = Literal["openai", "anthropic"]
OutcomeKind = Literal["succeeded", "failed", "retry_sync"]


@dataclass(frozen=True)
class BatchRequest:
    """One job's line in a provider batch: its provider custom_id and the line's JSON."""

    key: str
    job: Job
    line: dict[str, Any]
    size: int  # the line's bytes as uploaded (with its newline or separating comma)


@dataclass
class BatchPart:
    """One provider batch to create: jobs of one provider (and, at OpenAI, one model),
    within the API's limits (``requests.LIMITS``)."""

    api: BatchApiKind
    provider: str  # the config's provider name
    model: str | None  # the model id of every line (OpenAI: one per file); None: mixed
    requests: list[BatchRequest] = field(default_factory=list)
    ids: CustomIds = field(default_factory=CustomIds)
    size: int = 0  # bytes of the file (OpenAI) or of the create request's body (Anthropic)
    jobs: dict[str, Job] = field(default_factory=dict)  # by provider custom_id

    def add(self, request: BatchRequest) -> None:
        """Take one more line (its job's provider custom_id recorded in ``ids``)."""
        job = request.job
        self.ids.add(job.batch_id or "", job.custom_id)
        self.requests.append(request)
        self.jobs[request.key] = job
        self.size += request.size


@dataclass(frozen=True)
class BatchState:
    """A provider batch as its API reports it. ``created_at`` and ``metadata`` are what a
    run finds a batch by after a crash between creating it and recording its id (the
    part's record still ``creating``): ``created_at`` is the provider's clock, not ours."""

    id: str
    status: str  # the provider's own word (OpenAI ``status``, Anthropic ``processing_status``)
    ended: bool  # no line will change any more: its results can be read
    counts: dict[str, int]  # the provider's ``request_counts``
    created_at: float  # epoch seconds (OpenAI's integer ``created_at``, Anthropic's RFC 3339)
    metadata: dict[str, str]  # OpenAI's ``metadata`` ({} when none); Anthropic has none: {}
    raw: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class JobOutcome:
    """What became of one job in a provider batch (see the module docstring)."""

    batch_id: str
    custom_id: str
    kind: OutcomeKind
    body: dict[str, Any] | None = None  # succeeded: the provider's answer
    usage: Usage | None = None  # succeeded: what the provider billed (None: not reported)
    status: int | None = None  # failed: the HTTP status the API gave the line
    error: dict[str, Any] | None = None  # failed: the provider's error body
    message: str = ""  # failed and retry_sync: the provider's words, or why


class BatchApiError(RuntimeError):
    """A batch API call that failed: the provider's status (None: no answer), message and
    code; ``transient`` when trying again later may work (no answer, 408, 409, 429, 5xx)."""

    def __init__(self, message: str, *, status: int | None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    @property
    def transient(self) -> bool:
        return self.status is None or self.status in (408, 409, 429) or self.status >= 500


class MalformedResult(ValueError):
    """A result line that cannot be read: not JSON, no custom_id, a custom_id that is not
    in the batch or that came twice, an outcome of no known shape. Names the provider
    batch, the file and the line."""


def transient_status(status: int) -> bool:
    """A line's status that may pass on another try: 408, 409, 429 and 5xx."""
    return status in (408, 409, 429) or status >= 500


class BatchApi(Protocol):
    """A provider's batch API, as the scheduled function drives it."""

    api: ClassVar[BatchApiKind]

    def create(self, part: BatchPart, metadata: dict[str, str] | None = None) -> BatchState:
        """Upload the part and create its provider batch."""
        ...

    def poll(self, batch_id: str) -> BatchState:
        """The batch's state now."""
        ...

    def cancel(self, batch_id: str) -> BatchState:
        """Ask the provider to stop the batch (its answered lines stay answered)."""
        ...

    def results(self, batch_id: str, part: BatchPart) -> list[JobOutcome]:
        """Every job of ``part`` with its outcome, once the batch has ended."""
        ...

    def listed(self, created_after: float, *, page_size: int = ...) -> Iterator[BatchState]:
        """Every provider batch created at ``created_after`` or later, newest first."""
        ...
