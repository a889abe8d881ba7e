"""Chat client for OpenAI-compatible ``/v1/chat/completions`` endpoints.

``ProviderClient.complete`` makes one logical call: it sends the request, retries what a
retry can fix and gives up, in time, on what it cannot.

- One ``httpx.AsyncClient`` (connection pool) per provider and event loop, created on
  first use and reused by every later call on that loop: a Lambda worker that keeps one
  loop across invocations keeps its connections warm (the pools of a closed loop, e.g.
  after ``asyncio.run``, are dropped and rebuilt on the next loop). Timeouts (connect,
  read, write, pool) and the pool size come from ``[providers.NAME]``; every call also
  has an overall deadline that the caller sets and that bounds attempts and the waits
  between them (no retry starts in its last ``MIN_ATTEMPT_S``: it would most likely be cut
  after it was sent).
- Retried: 429, 408, 409, 5xx, and an attempt whose request never left (a connect
  error, a write that failed). An attempt the provider may have billed (a 200 whose body
  is not valid JSON, a stream that is corrupt or ends without ``[DONE]``, a reset or a
  timeout after the request was sent) ends the call, transient and ``maybe_billed``:
  the caller books it at its worst case before paying for another attempt
  (``chatbatch.provider.attempt``, **Maybe billed**). The wait is
  exponential backoff with full jitter, unless the server names its own delay
  (``retry-after-ms``, then ``retry-after`` in seconds or as an HTTP date), capped by
  ``[retries]``. Any other status (400, 401, 403, 404, 422, ...) is a permanent error
  carrying the provider's message. An account-level error (a wrong key, no access, no
  such model, a 429 or 402 saying the quota or credit is gone) is permanent too, and its
  ``Attempt`` and ``ProviderError`` say so (``account``): the worker pauses the model.
- ``stream: true`` is read with ``SSEParser`` and ``ChatStream`` and assembled into the
  same ``chat.completion`` body a non-streamed call returns, usage included (None in the
  ``Completion`` when the answer carried none).
- Every response's ``x-ratelimit-*`` headers become a ``RateLimitInfo``, handed with each
  ``Attempt`` to ``on_attempt`` (the adaptive rate limiter listens there). A retry is
  sent only once the caller's ``before_retry`` says so (the worker takes rate-limit
  capacity for it there: every attempt counts at the provider); if it says no, the call
  ends with the last failure.

A provider of kind ``anthropic`` is called at its ``/messages`` URL with ``x-api-key``
and ``anthropic-version`` (``translate.wire_body`` made the body); its 200 is read as a
Message, plain or streamed (``chatbatch.provider.message_stream``), and the
``Completion`` carries that Message (``translate.result_body`` makes the result's
chat.completion) with its usage, cache writes and reads included. Its error bodies
(``{"type": "error", "error": {"type", "message"}}``) are read like OpenAI's (the type
is the code: 529 ``overloaded_error`` and 5xx retried, 429 ``rate_limit_error`` retried
after ``retry-after``, 401/403/404 account errors, 400 permanent), its ``request-id``
header is the request id, and its ``anthropic-ratelimit-*`` headers the ``RateLimitInfo``.

The API key is sent as ``Authorization: Bearer`` (kind openai) or ``x-api-key`` (kind
anthropic) and nowhere else: no exception text,
attempt record or log line carries it. A key the lookup finds malformed
(``chatbatch.provider.keys``) is never sent: the call fails as an account error
(``auth``, code ``malformed_api_key``), so the model pauses as on a 401; so does a
provider with no key at all (``MissingKeyError``, code ``missing_api_key``). Transport
errors are fixed texts (``classify``); any provider text echoing the key, whole, escaped
or in pieces, is redacted.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
from aws_lambda_powertools import Logger

from chatbatch.core.config import Config, Provider, Timeouts
from chatbatch.core.pricing import Usage
from chatbatch.provider.attempt import (
    Attempt,
    AttemptResult,
    Completion,
    Sent,
    WritePacing,
    read_answer,
)
from chatbatch.provider.errors import (
    AccountError,
    AccountReason,
    HttpAnswer,
    ProviderError,
    ResponseError,
    request_id_of,
)
from chatbatch.provider.keys import MalformedKeyError, MissingKeyError, Redactor, checked_key
from chatbatch.provider.message_stream import read_message
from chatbatch.provider.retry import (
    ATTEMPT_ERRORS,
    RateLimitInfo,
    classify,
    failed_response,
    parse_retry_after,
    retry_delay_s,
    stop_reason,
)

logger = Logger(service="chatbatch", child=True)

USER_AGENT = "chatbatch"


# --- The client ----------------------------------------------------------------------

ApiKeyLookup = Callable[[str], str | None]
AttemptHook = Callable[[str, Attempt, RateLimitInfo | None], None]
Sleep = Callable[[float], Awaitable[None]]
BeforeRetry = Callable[[], Awaitable[bool]]  # True: send the retry now; False: give up


def _attempt_timeout(timeouts: Timeouts, remaining_s: float) -> httpx.Timeout:
    remaining_s = max(remaining_s, 0.001)
    return httpx.Timeout(
        connect=min(timeouts.connect_s, remaining_s),
        read=min(timeouts.read_s, remaining_s),
        write=min(timeouts.write_s, remaining_s),
        pool=min(timeouts.pool_s, remaining_s),
    )


class ProviderClient:
    """Calls chat models of a ``Config`` with retries, timeouts and a per-call deadline.

    ``api_key`` maps a provider name to its key (None sends no ``Authorization``); it is
    asked on every call, so a rotated secret is picked up. ``on_attempt`` sees every
    attempt with the response's rate-limit headers. ``sleep``, ``rng`` and ``clock`` are
    there for tests. Safe to share by concurrent tasks; ``aclose`` closes the pools of the
    running event loop.
    """

    def __init__(
        self,
        config: Config,
        api_key: ApiKeyLookup,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        on_attempt: AttemptHook | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._api_key = api_key
        self._transport = transport
        self._on_attempt = on_attempt
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._clock = clock
        self._pools: dict[asyncio.AbstractEventLoop, dict[str, httpx.AsyncClient]] = {}

    def __repr__(self) -> str:
        return f"ProviderClient(providers={sorted(self.config.providers)})"

    async def complete(
        self,
        model_name: str,
        body: dict[str, Any],
        *,
        deadline_s: float | None = None,
        before_retry: BeforeRetry | None = None,
        pacing: WritePacing | None = None,
    ) -> Completion:
        """POST ``body`` to the chat endpoint of ``model_name`` (a configured name or id).

        ``deadline_s`` is how long the whole call may take from now, attempts and waits
        included (default and ceiling: the provider's ``timeouts.total_s``).
        ``before_retry`` is awaited after a retry's backoff, before it is sent;
        ``pacing`` is told as each attempt's request is written on its ready connection
        (the worker's last pacing: nothing slow comes between it and the socket). Raises
        ``ProviderError``.
        """
        start = self._clock()
        resolved = self.config.resolve_model(model_name)
        if resolved is None:
            raise ProviderError(
                f"unknown model {model_name!r}", status=None, permanent=True, attempts=[]
            )
        name, model = resolved
        provider = self.config.providers[model.provider]
        total_s = provider.timeouts.total_s
        deadline = start + (total_s if deadline_s is None else min(deadline_s, total_s))
        key = provider_key(self._api_key, model.provider)
        sent_body = _with_usage(body) if provider.kind == "openai" else body
        request = _Request(
            provider=provider,
            headers=auth_headers(key, provider),
            content=json.dumps(sent_body, separators=(",", ":")).encode(),
            redact=Redactor(key),
        )
        client = self._http(model.provider, provider)
        attempts: list[Attempt] = []
        while True:
            outcome = await self._attempt(client, request, deadline, pacing)
            attempts.append(outcome.attempt)
            self._notify(name, outcome)
            if outcome.body is not None:
                return Completion(
                    body=outcome.body,
                    usage=outcome.usage,
                    attempts=attempts,
                    latency_ms=_ms(self._clock() - start),
                    rate_limits=outcome.rate_limits,
                    request_id=outcome.request_id,
                )
            retries = self.config.retries
            delay = retry_delay_s(retries, len(attempts), outcome.attempt.retry_after_s, self._rng)
            stop = stop_reason(
                retries,
                permanent=outcome.permanent,
                attempt_count=len(attempts),
                retry_at=self._clock() + delay,
                deadline=deadline,
                maybe_billed=outcome.attempt.maybe_billed,
            )
            if stop:
                raise self._give_up(name, outcome, attempts, stop)
            logger.warning(
                "provider call failed; retrying",
                extra={
                    "model": name,
                    "attempt": len(attempts),
                    "status": outcome.attempt.status,
                    "error": outcome.attempt.error,
                    "retry_in_s": round(delay, 3),
                },
            )
            await self._sleep(delay)
            if before_retry is not None and not await before_retry():
                raise self._give_up(name, outcome, attempts, "no rate-limit capacity to retry")

    async def aclose(self) -> None:
        """Close this event loop's connection pools (pools of other loops are dropped)."""
        loop = asyncio.get_running_loop()
        pools = self._pools.pop(loop, {})
        self._pools.clear()
        for client in pools.values():
            await client.aclose()

    # -- one attempt ----------------------------------------------------------------

    async def _attempt(
        self,
        client: httpx.AsyncClient,
        request: _Request,
        deadline: float,
        pacing: WritePacing | None = None,
    ) -> AttemptResult:
        began = self._clock()
        remaining = deadline - began
        status: int | None = None
        rate_limits: RateLimitInfo | None = None
        retry_after: float | None = None
        request_id: str | None = None
        sent = Sent(pacing=pacing)
        try:
            async with asyncio.timeout(remaining):
                if pacing is not None:
                    await pacing.ready()
                response = await client.send(request.build(client, remaining, sent), stream=True)
                try:
                    status = response.status_code
                    request_id = request_id_of(response.headers)
                    rate_limits = RateLimitInfo.from_headers(response.headers)
                    retry_after = parse_retry_after(response.headers)
                    body, usage = await self._read(response, request.provider)
                finally:
                    await response.aclose()
        except ATTEMPT_ERRORS as err:
            error, code, permanent = classify(err)
            account = err.reason if isinstance(err, AccountError) else None
            answer = err.answer if isinstance(err, ResponseError) else None
        else:
            attempt = Attempt(status=status, latency_ms=_ms(self._clock() - began))
            return AttemptResult(
                attempt=attempt,
                body=body,
                usage=usage,
                rate_limits=rate_limits,
                request_id=request_id,
            )
        error = request.redact(error)
        attempt = Attempt(
            status=status,
            error=error,
            latency_ms=_ms(self._clock() - began),
            retry_after_s=None if permanent else retry_after,
            account=account,
            maybe_billed=status in (200, None) and (sent.whole or status == 200),
        )
        return AttemptResult(
            attempt,
            rate_limits=rate_limits,
            permanent=permanent,
            message=error,
            code=code,
            account=account,
            answer=_redacted(answer, request.redact),
            request_id=request_id,
        )

    @staticmethod
    async def _read(
        response: httpx.Response, provider: Provider
    ) -> tuple[dict[str, Any], Usage | None]:
        status = response.status_code
        if status == 200:
            read = read_message if provider.kind == "anthropic" else read_answer
            return await read(response)
        raise failed_response(status, await response.aread(), response.headers)

    # -- between attempts -----------------------------------------------------------

    def _give_up(
        self, model: str, outcome: AttemptResult, attempts: list[Attempt], reason: str
    ) -> ProviderError:
        logger.warning(
            "provider call failed",
            extra={
                "model": model,
                "attempts": len(attempts),
                "status": outcome.attempt.status,
                "error": outcome.attempt.error,
                "reason": reason,
            },
        )
        message = outcome.message if reason == "permanent" else f"{reason}: {outcome.message}"
        return ProviderError(
            message,
            status=outcome.attempt.status,
            permanent=outcome.permanent,
            attempts=attempts,
            retry_after_s=outcome.attempt.retry_after_s,
            code=outcome.code,
            account=outcome.account,
            answer=outcome.answer,
        )

    def _notify(self, model: str, outcome: AttemptResult) -> None:
        if self._on_attempt is None:
            return
        try:
            self._on_attempt(model, outcome.attempt, outcome.rate_limits)
        except Exception:
            logger.exception("on_attempt hook failed", extra={"model": model})

    # -- connection pools -----------------------------------------------------------

    def _http(self, name: str, provider: Provider) -> httpx.AsyncClient:
        for loop in [loop for loop in self._pools if loop.is_closed()]:
            del self._pools[loop]  # a finished asyncio.run(): its connections died with it
        pools = self._pools.setdefault(asyncio.get_running_loop(), {})
        client = pools.get(name)
        if client is None or client.is_closed:
            client = pools[name] = self._new_pool(provider)
        return client

    def _new_pool(self, provider: Provider) -> httpx.AsyncClient:
        t = provider.timeouts
        return httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=t.connect_s, read=t.read_s, write=t.write_s, pool=t.pool_s
            ),
            limits=httpx.Limits(
                max_connections=provider.max_connections,
                max_keepalive_connections=provider.max_connections,
                keepalive_expiry=30,
            ),
            transport=self._transport,
            headers={"user-agent": USER_AGENT},
            verify=tls_context(),
        )


@dataclass(frozen=True)
class _Request:
    """The parts of a call's request that stay the same across attempts."""

    provider: Provider
    headers: dict[str, str]
    content: bytes
    redact: Redactor = field(repr=False)

    def build(self, client: httpx.AsyncClient, remaining_s: float, sent: Sent) -> httpx.Request:
        return client.build_request(
            "POST",
            self.provider.url,
            content=self.content,
            headers=self.headers,
            timeout=_attempt_timeout(self.provider.timeouts, remaining_s),
            extensions={"trace": sent},
        )


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's own default TLS context (its CA bundle, hostnames verified), built once for
    every pool of the process: building one costs ~60 ms of CPU, once per pool otherwise
    (per event loop and provider: the local runtime starts dozens of instances at once)."""
    return httpx.create_ssl_context()


def provider_key(api_key: ApiKeyLookup, provider: str) -> str | None:
    """The provider's key, checked again whatever the lookup did: a malformed one is an
    account error and never reaches httpx (whose errors would echo the header)."""
    try:
        key = api_key(provider)
        return None if key is None else checked_key(key, f"the API key of provider {provider}")
    except (MalformedKeyError, MissingKeyError) as err:
        raise ProviderError(
            str(err),
            status=None,
            permanent=True,
            attempts=[],
            code=err.code,
            account=AccountReason.auth,
        ) from None


def auth_headers(key: str | None, provider: Provider) -> dict[str, str]:
    """The request's headers: the key as ``Authorization: Bearer`` (kind openai) or as
    ``x-api-key`` with ``anthropic-version`` (kind anthropic), never both."""
    headers = {"content-type": "application/json"}
    if provider.kind == "anthropic":
        headers["anthropic-version"] = provider.anthropic_version
        if key:
            headers["x-api-key"] = key
    elif key:
        headers["authorization"] = f"Bearer {key}"
    return headers


def _with_usage(body: dict[str, Any]) -> dict[str, Any]:
    """A streamed request asks for the final usage chunk unless it says otherwise."""
    if body.get("stream") and "stream_options" not in body:
        return body | {"stream_options": {"include_usage": True}}
    return body


def _redacted(answer: HttpAnswer | None, redact: Redactor) -> HttpAnswer | None:
    """The answer with the key hidden wherever its body echoes it (every string in it)."""
    if answer is None:
        return None
    return replace(answer, body=_redact_strings(answer.body, redact))


def _redact_strings(value: Any, redact: Redactor) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(str(k)): _redact_strings(v, redact) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_strings(v, redact) for v in value]
    return value


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))
