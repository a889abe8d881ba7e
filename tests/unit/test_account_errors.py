"""Account-level errors: told apart from a job's own errors and from rate limits.

The bodies are shaped like the providers' real ones: OpenAI's ``{"error": {"message",
"type", "param", "code"}}``, DeepSeek's (the same shape, its own messages; 402 for an empty
balance, 400 "Model Not Exist"), Anthropic's ``{"type": "error", "error": {"type",
"message"}}``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from chatbatch.core.config import Config, Retries
from chatbatch.provider.attempt import Attempt
from chatbatch.provider.client import ProviderClient
from chatbatch.provider.errors import (
    AccountError,
    AccountReason,
    PermanentError,
    ProviderError,
    TransientError,
)
from chatbatch.provider.retry import RateLimitInfo, failed_response
from chatbatch.state.limiter.limiter import RateLimiter


def _openai(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    ).encode()


def _anthropic(type_: str, message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": type_, "message": message}}).encode()


QUOTA = _openai(
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, read the docs: "
    "https://platform.openai.com/docs/guides/error-codes/api-errors.",
    "insufficient_quota",
    "insufficient_quota",
)
RATE_LIMIT = _openai(
    "Rate limit reached for gpt-4.1 in organization org-x on requests per min (RPM): "
    "Limit 500, Used 500, Requested 1. Please try again in 120ms.",
    "requests",
    "rate_limit_exceeded",
)

ACCOUNT_CASES: list[tuple[str, int, bytes, AccountReason]] = [
    (
        "openai wrong key",
        401,
        _openai(
            "Incorrect API key provided: sk-abc***. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            "invalid_api_key",
        ),
        AccountReason.auth,
    ),
    (
        "openai no key",
        401,
        _openai(
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            "invalid_request_error",
            None,
        ),
        AccountReason.auth,
    ),
    (
        "deepseek wrong key",
        401,
        _openai(
            "Authentication Fails, Your api key: ****abcd is invalid",
            "authentication_error",
            "invalid_request_error",
        ),
        AccountReason.auth,
    ),
    (
        "anthropic wrong key",
        401,
        _anthropic("authentication_error", "invalid x-api-key"),
        AccountReason.auth,
    ),
    (
        "anthropic forbidden",
        403,
        _anthropic("permission_error", "Your API key does not have permission to use the model."),
        AccountReason.forbidden,
    ),
    (
        "openai unsupported region",
        403,
        _openai("Country, region, or territory not supported", "request_forbidden", None),
        AccountReason.forbidden,
    ),
    (
        "openai no such model",
        404,
        _openai(
            "The model `gpt-9` does not exist or you do not have access to it.",
            "invalid_request_error",
            "model_not_found",
        ),
        AccountReason.model_not_found,
    ),
    (
        "openai project without model access",
        403,
        _openai(
            "Project `proj_x` does not have access to model `gpt-4o`",
            "invalid_request_error",
            "model_not_found",
        ),
        AccountReason.model_not_found,
    ),
    (
        "deepseek no such model",
        400,
        _openai("Model Not Exist", "invalid_request_error", "invalid_request_error"),
        AccountReason.model_not_found,
    ),
    (
        "anthropic no such model",
        404,
        _anthropic("not_found_error", "model: claude-9-opus"),
        AccountReason.model_not_found,
    ),
    ("openai quota", 429, QUOTA, AccountReason.quota),
    (
        "openai billing hard limit",
        400,
        _openai(
            "Billing hard limit has been reached",
            "invalid_request_error",
            "billing_hard_limit_reached",
        ),
        AccountReason.quota,
    ),
    (
        "deepseek balance",
        402,
        _openai("Insufficient Balance", "unknown_error", "invalid_request_error"),
        AccountReason.quota,
    ),
    (
        "anthropic billing",
        402,
        _anthropic("billing_error", "Your credit balance is too low."),
        AccountReason.quota,
    ),
    (
        "anthropic credit too low (its real answer: a 400)",
        400,
        _anthropic(
            "invalid_request_error",
            "Your credit balance is too low to access the Anthropic API. Please go to Plans "
            "& Billing to upgrade or purchase credits.",
        ),
        AccountReason.quota,
    ),
]

JOB_CASES: list[tuple[str, int, bytes, type[Exception]]] = [
    ("openai rate limit", 429, RATE_LIMIT, TransientError),
    (
        "anthropic rate limit",
        429,
        _anthropic("rate_limit_error", "Number of requests..."),
        TransientError,
    ),
    (
        "deepseek rate limit",
        429,
        _openai("Rate Limit Reached", "rate_limit_error", None),
        TransientError,
    ),
    ("a 429 without a body", 429, b"", TransientError),
    ("overloaded", 529, _anthropic("overloaded_error", "Overloaded"), TransientError),
    (
        "a job's own bad parameter",
        400,
        _openai(
            "Invalid 'messages[1].content': string too long.",
            "invalid_request_error",
            "string_above_max_length",
            "messages[1].content",
        ),
        PermanentError,
    ),
    (
        "a parameter the model does not support",
        400,
        _openai(
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
            "invalid_request_error",
            "unsupported_parameter",
            "max_tokens",
        ),
        PermanentError,
    ),
    (
        "deepseek invalid parameters",
        422,
        _openai("Invalid max_tokens value", "invalid_request_error", None),
        PermanentError,
    ),
    (
        "a wrong URL",
        404,
        _openai("Unknown request URL: POST /v1/chat.", "invalid_request_error", "unknown_url"),
        PermanentError,
    ),
    (
        "a server error mentioning quota",
        500,
        _openai("quota service unavailable", "server_error", None),
        TransientError,
    ),
]


@pytest.mark.parametrize(
    ("name", "status", "body", "reason"), ACCOUNT_CASES, ids=[c[0] for c in ACCOUNT_CASES]
)
def test_account_errors_are_recognised(
    name: str, status: int, body: bytes, reason: AccountReason
) -> None:
    err = failed_response(status, body)
    assert isinstance(err, AccountError), name
    assert err.reason is reason
    assert str(err)  # the provider's own message is kept


@pytest.mark.parametrize(
    ("name", "status", "body", "kind"), JOB_CASES, ids=[c[0] for c in JOB_CASES]
)
def test_other_errors_stay_what_they_were(
    name: str, status: int, body: bytes, kind: type[Exception]
) -> None:
    err = failed_response(status, body)
    assert type(err) is kind, name


def _client(
    config: Config, status: int, body: bytes, seen: list[tuple[str, Attempt, RateLimitInfo | None]]
) -> tuple[ProviderClient, list[int]]:
    calls: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        headers = {"content-type": "application/json", "retry-after": "1"}
        return httpx.Response(status, content=body, headers=headers)

    retries = Retries(max_attempts=5, base_s=0.001, max_backoff_s=0.001, max_retry_after_s=0.001)

    async def no_sleep(_: float) -> None:
        return None

    client = ProviderClient(
        config.model_copy(update={"retries": retries}),
        lambda _: "sk-secret-key-1234",
        transport=httpx.MockTransport(answer),
        on_attempt=lambda model, attempt, limits: seen.append((model, attempt, limits)),
        sleep=no_sleep,
    )
    return client, calls


def _call(client: ProviderClient) -> ProviderError:
    body: dict[str, Any] = {
        "model": "deepseek-chat",
        "messages": [{"role": "user", "content": "hi"}],
    }
    with pytest.raises(ProviderError) as caught:
        asyncio.run(client.complete("deepseek-chat", body, deadline_s=10))
    return caught.value


def test_insufficient_quota_is_not_retried_and_says_it_is_an_account_error(config: Config) -> None:
    seen: list[tuple[str, Attempt, RateLimitInfo | None]] = []
    client, calls = _client(config, 429, QUOTA, seen)
    err = _call(client)
    assert len(calls) == 1  # was: every attempt (5 per delivery), each halving the limit
    assert (err.status, err.permanent, err.account, err.code) == (
        429,
        True,
        AccountReason.quota,
        "insufficient_quota",
    )
    assert [a.account for _, a, _ in seen] == [AccountReason.quota]
    assert "sk-secret-key-1234" not in str(err)


def test_a_real_rate_limit_is_still_retried(config: Config) -> None:
    seen: list[tuple[str, Attempt, RateLimitInfo | None]] = []
    client, calls = _client(config, 429, RATE_LIMIT, seen)
    err = _call(client)
    assert len(calls) == 5 and not err.permanent and err.account is None


class _Recorder(RateLimiter):
    def __init__(self) -> None:  # no table: only what observe_attempt reports is recorded
        self.reported: list[str] = []

    def report_429(self, model: str) -> None:
        self.reported.append(model)


def test_the_limiter_is_not_told_of_a_quota_429() -> None:
    limiter = _Recorder()
    limiter.observe_attempt("m", Attempt(status=429, account=AccountReason.quota), None)
    assert limiter.reported == []
    limiter.observe_attempt("m", Attempt(status=429), None)
    assert limiter.reported == ["m"]
