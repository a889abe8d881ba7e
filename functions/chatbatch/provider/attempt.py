"""One HTTP exchange of a call: what it is recorded as, how its answer is read, and
whether the provider may have billed it.

- ``Attempt`` is the record of one exchange (status or error, timing, and whether it is
  an account error or ``maybe_billed``); ``Completion`` is a call that got an answer.
- ``read_answer`` reads a 200 (plain JSON or ``text/event-stream``) into the
  ``chat.completion`` body and its usage: None when the answer came without one.
- ``Sent`` watches the request through httpx's ``trace`` extension and knows when its
  body has left whole.

**Maybe billed.** A provider bills the generation it finished, whether or not the client
read it. An attempt is ``maybe_billed`` when its request left whole and no usage was read
back: a 200 whose body is cut, corrupt or not a chat completion, a stream that ends
before ``[DONE]``, or no response at all after the request was sent (a reset, a read
timeout, the deadline). A refusal (any other status) is not billed, and neither is an
attempt whose request never left (no connection, a write that failed). The client makes
at most one such attempt per call (the caller books it at its worst case before paying
for another); a 200 that was read whole but carries no usage is a ``Completion`` whose
``usage`` is None, and the caller books it the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
from pydantic import BaseModel, ConfigDict

from chatbatch.core.pricing import Usage
from chatbatch.provider.errors import AccountReason, HttpAnswer
from chatbatch.provider.retry import RateLimitInfo
from chatbatch.provider.sse import StreamError, read_stream

# httpcore's trace events for a request body written whole (HTTP/1.1 and HTTP/2)
BODY_SENT = frozenset({"http11.send_request_body.complete", "http2.send_request_body.complete"})
WRITE_STARTS = frozenset(
    {"http11.send_request_headers.started", "http2.send_request_headers.started"}
)


class Attempt(BaseModel):
    """One HTTP exchange of a call: its status (None if no response) or error, and timing."""

    model_config = ConfigDict(frozen=True)

    status: int | None = None
    error: str | None = None
    latency_ms: int = 0
    retry_after_s: float | None = None
    account: AccountReason | None = None  # an account-level error (a 429 that is no rate limit)
    maybe_billed: bool = False  # sent whole, and no usage came back (the module docstring)


class Completion(BaseModel):
    """A successful call: the ``chat.completion`` body (streamed or not) and how it went.

    ``usage`` is None when the answer carried none (a stream without its usage chunk, a
    gateway that drops it): the provider billed it all the same."""

    body: dict[str, Any]
    usage: Usage | None
    attempts: list[Attempt]
    latency_ms: int
    rate_limits: RateLimitInfo | None = None
    request_id: str | None = None  # the answer's x-request-id header, if it had one

    @property
    def content(self) -> str | None:
        """The first choice's message text."""
        choices = self.body.get("choices") or [{}]
        content = (choices[0].get("message") or {}).get("content")
        return content if isinstance(content, str) else None


@dataclass
class AttemptResult:
    """What one attempt produced: a body, or an error that is permanent or not."""

    attempt: Attempt
    body: dict[str, Any] | None = None
    usage: Usage | None = None
    rate_limits: RateLimitInfo | None = None
    permanent: bool = False
    message: str = ""
    code: str | None = None
    account: AccountReason | None = None
    answer: HttpAnswer | None = None  # an error response, as the provider sent it
    request_id: str | None = None  # the x-request-id of the answer (a body's or an error's)


class WritePacing(Protocol):
    """The caller's pacing of each attempt: ``ready`` is awaited before the attempt takes
    a connection (the wait, if any, is spent there, not on a connection the server may
    close meanwhile), ``before_write`` as its request is about to be written on the ready
    connection (the last step: a wait of milliseconds at most after ``ready``), and
    ``written`` is called once it left."""

    async def ready(self) -> None: ...

    async def before_write(self) -> None: ...

    def written(self) -> None: ...


@dataclass
class Sent:
    """Whether the request's body has left whole (httpx ``trace`` extension); tells
    ``pacing`` when the request is written."""

    whole: bool = field(default=False)
    pacing: WritePacing | None = None

    async def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event in WRITE_STARTS and self.pacing is not None:
            await self.pacing.before_write()
        if event in BODY_SENT:
            self.whole = True
            if self.pacing is not None:
                self.pacing.written()


async def read_answer(response: httpx.Response) -> tuple[dict[str, Any], Usage | None]:
    """The ``chat.completion`` body of a 200 and its usage (None: the answer had none).

    Raises ``StreamError`` for a body that cannot be read: not JSON, not a chat
    completion, a stream cut or corrupt, a usage block that makes no sense."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        body = await read_stream(response)
    else:
        body = _parse_json_body(await response.aread())
    return body, _usage_of(body)


def _parse_json_body(content: bytes) -> dict[str, Any]:
    try:
        body = json.loads(content)
    except ValueError as err:
        raise StreamError(f"200 with a body that is not valid JSON: {err}") from None
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        raise StreamError("200 with a body that is not a chat completion")
    return body


def _usage_of(body: dict[str, Any]) -> Usage | None:
    usage = body.get("usage")
    if usage is None or usage == {}:
        return None
    try:
        return Usage.from_api(usage)
    except (AttributeError, TypeError, ValueError) as err:
        raise StreamError(f"200 with a malformed usage block: {err}") from None
