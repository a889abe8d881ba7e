"""What a failed provider call raises, and the error kinds of one response.

``ProviderError`` is the one exception ``ProviderClient.complete`` raises: a call that
failed for good or ran out of attempts or time. ``ResponseError`` and its two kinds
(``TransientError``, ``PermanentError``, and ``AccountError``, the permanent kind that is
the account's fault rather than the job's) are what one error response becomes inside an
attempt; ``response_error`` and ``error_text`` read the provider's own message and code
from an OpenAI-style (or Anthropic-style) error body, and ``account_reason`` says whether
it is an account-level error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from chatbatch.provider.attempt import Attempt


class ProviderError(Exception):
    """A call that failed for good (``permanent``) or ran out of attempts or time.

    ``message`` is the provider's own error message when it sent one; ``retry_after_s``
    is the server's last requested delay, so a caller can re-queue the job for then.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None,
        permanent: bool,
        attempts: list[Attempt],
        retry_after_s: float | None = None,
        code: str | None = None,
        account: AccountReason | None = None,
        answer: HttpAnswer | None = None,
    ) -> None:
        self.message = message
        self.status = status
        self.permanent = permanent
        self.attempts = attempts
        self.retry_after_s = retry_after_s
        self.code = code
        self.account = account  # an account-level error: every job of the model would get it
        self.answer = answer  # the provider's HTTP answer, when the last attempt got one
        super().__init__(str(self))

    @property
    def maybe_billed(self) -> bool:
        """The last attempt may have been billed with its answer unread: book it."""
        return bool(self.attempts) and self.attempts[-1].maybe_billed

    def __str__(self) -> str:
        status = f"HTTP {self.status}" if self.status is not None else "no response"
        tries = f"{len(self.attempts)} attempt{'s' if len(self.attempts) != 1 else ''}"
        kind = "permanent" if self.permanent else "transient"
        return f"{status}, {kind}, after {tries}: {self.message}"


@dataclass(frozen=True)
class HttpAnswer:
    """The provider's answer to a failed request, as it sent it: the status, its
    ``x-request-id`` header (None if it sent none) and the body (a JSON object; a body
    that is not one becomes ``{"error": {"message": <its text>, "type": "http_error",
    "param": null, "code": null}}``)."""

    status: int
    request_id: str | None
    body: dict[str, Any]


def http_answer(status: int, headers: Mapping[str, str], content: bytes) -> HttpAnswer:
    """The ``HttpAnswer`` of an error response."""
    try:
        payload = json.loads(content)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        text = content.decode("utf-8", "replace").strip()[:500]
        message = text or httpx.codes.get_reason_phrase(status) or f"HTTP {status}"
        error = {"message": message, "type": "http_error", "param": None, "code": None}
        payload = {"error": error}
    return HttpAnswer(status=status, request_id=request_id_of(headers), body=payload)


def request_id_of(headers: Mapping[str, str]) -> str | None:
    """The provider's id of a response: ``x-request-id`` (OpenAI), ``request-id``
    (Anthropic)."""
    return headers.get("x-request-id") or headers.get("request-id")


class ResponseError(Exception):
    """An error response; its message and code are the provider's own, ``answer`` the
    response itself (None for an error raised without one)."""

    def __init__(
        self, message: str, code: str | None = None, answer: HttpAnswer | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.answer = answer


class TransientError(ResponseError):
    """A response a retry may fix (429, 408, 409, 5xx)."""


class PermanentError(ResponseError):
    """A response no retry can fix (any other 4xx)."""


class AccountReason(StrEnum):
    """Why an error is the account's and not the job's: no job of the model can succeed
    until someone fixes the key, the access, the model id or the credit."""

    auth = "auth"  # 401: a wrong, missing or revoked key
    forbidden = "forbidden"  # 403: the key may not use this model or endpoint
    model_not_found = "model_not_found"  # no such model (or no access to it)
    quota = "quota"  # out of quota, credit or balance (429 insufficient_quota, 402,
    # Anthropic's 400 "Your credit balance is too low")


class AccountError(PermanentError):
    """An account-level error: not retried, not a rate limit; the model is paused."""

    def __init__(
        self,
        message: str,
        code: str | None,
        reason: AccountReason,
        answer: HttpAnswer | None = None,
    ) -> None:
        super().__init__(message, code, answer)
        self.reason = reason


# codes and types (OpenAI's ``code``/``type``, Anthropic's ``type``) that mean no credit
QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached", "billing_error"})
MODEL_CODES = frozenset({"model_not_found"})
# DeepSeek: 400 "Model Not Exist"; OpenAI: "The model `x` does not exist ..."
_NO_MODEL = re.compile(r"\bmodel\b.*\b(does not exist|not exist|not found)\b", re.I | re.S)
# Anthropic: out of credit is a 400 invalid_request_error "Your credit balance is too low ..."
_NO_CREDIT = re.compile(r"\bcredit balance is too low\b", re.I)


def account_reason(
    status: int, message: str, codes: frozenset[str] = frozenset()
) -> AccountReason | None:
    """The account-level reason of an error response, or None for a job's own error.

    ``codes`` are the body's ``error.code`` and ``error.type`` values. A 429 is a rate
    limit unless its code says the quota or credit is gone; a 400 saying the credit balance
    is too low is Anthropic's out-of-credit answer.
    """
    if codes & QUOTA_CODES or status == 402 or (status == 400 and _NO_CREDIT.search(message)):
        return AccountReason.quota
    if status == 429 or status >= 500:
        return None
    if codes & MODEL_CODES or (status in (400, 404) and _NO_MODEL.search(message)):
        return AccountReason.model_not_found
    if status == 404 and "not_found_error" in codes and message.lower().startswith("model"):
        return AccountReason.model_not_found
    if status == 401:
        return AccountReason.auth
    if status == 403:
        return AccountReason.forbidden
    return None


def error_text(payload: Any) -> tuple[str, str | None]:
    """The provider's message and code from an OpenAI-style error body."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        code = error.get("code") or error.get("type")
        return str(error.get("message") or error), str(code) if code else None
    if isinstance(error, str):
        return error, None
    return str(payload)[:500], None


def error_codes(payload: Any) -> frozenset[str]:
    """The ``error.code`` and ``error.type`` values of an error body (strings only)."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return frozenset()
    return frozenset(str(v) for v in (error.get("code"), error.get("type")) if v)


def response_error(status: int, content: bytes) -> tuple[str, str | None, frozenset[str]]:
    """The message, code and all codes (``error_codes``) of an error response's body."""
    try:
        payload = json.loads(content)
    except ValueError:
        text = content.decode("utf-8", "replace").strip()[:500]
        return text or httpx.codes.get_reason_phrase(status) or f"HTTP {status}", None, frozenset()
    return (*error_text(payload), error_codes(payload))
