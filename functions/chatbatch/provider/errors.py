"""What a failed provider call raises, and the error kinds of one response.

``ProviderError`` is the one exception ``ProviderClient.complete`` raises: a call that
failed for good or ran out of attempts or time. ``ResponseError`` and its two kinds
(``TransientError``, ``PermanentError``) are what one error response becomes inside an
attempt; ``response_error`` and ``error_text`` read the provider's own message and code
from an OpenAI-style error body.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from chatbatch.provider.client import Attempt


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
    ) -> None:
        self.message = message
        self.status = status
        self.permanent = permanent
        self.attempts = attempts
        self.retry_after_s = retry_after_s
        self.code = code
        super().__init__(str(self))

    def __str__(self) -> str:
        status = f"HTTP {self.status}" if self.status is not None else "no response"
        tries = f"{len(self.attempts)} attempt{'s' if len(self.attempts) != 1 else ''}"
        kind = "permanent" if self.permanent else "transient"
        return f"{status}, {kind}, after {tries}: {self.message}"


class ResponseError(Exception):
    """An error response; its message and code are the provider's own."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class TransientError(ResponseError):
    """A response a retry may fix (429, 408, 409, 5xx)."""


class PermanentError(ResponseError):
    """A response no retry can fix (any other 4xx)."""


def error_text(payload: Any) -> tuple[str, str | None]:
    """The provider's message and code from an OpenAI-style error body."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        code = error.get("code") or error.get("type")
        return str(error.get("message") or error), str(code) if code else None
    if isinstance(error, str):
        return error, None
    return str(payload)[:500], None


def response_error(status: int, content: bytes) -> tuple[str, str | None]:
    """The message and code of an error response's body, JSON or not."""
    try:
        return error_text(json.loads(content))
    except ValueError:
        text = content.decode("utf-8", "replace").strip()[:500]
        return text or httpx.codes.get_reason_phrase(status) or f"HTTP {status}", None
