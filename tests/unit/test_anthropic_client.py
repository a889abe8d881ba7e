"""The provider client at a kind anthropic provider: the request it sends (URL, headers,
never Authorization), Messages read plain and streamed into a Message with its usage, the
maybe-billed rules of a cut stream, Anthropic's errors, request ids and rate-limit headers."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from anthropic.types import Message as AnthropicMessage

from chatbatch.core.config import Config, parse_config
from chatbatch.provider.attempt import Completion
from chatbatch.provider.client import ProviderClient
from chatbatch.provider.errors import AccountReason, ProviderError
from chatbatch.provider.retry import RateLimitInfo
from tests.unit.test_anthropic_config import anthropic_config

KEY = "sk-ant-secret-0123456789"
BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 50,
    "messages": [{"role": "user", "content": "hi"}],
}
MESSAGE: dict[str, Any] = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-haiku-4-5",
    "content": [{"type": "text", "text": "hello"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 5,
        "output_tokens": 2,
        "cache_creation_input_tokens": 7,
        "cache_read_input_tokens": 11,
    },
}


@pytest.fixture(scope="module")
def config() -> Config:
    return parse_config(anthropic_config())


def run(
    config: Config, answer: Callable[[httpx.Request], httpx.Response], body: dict[str, Any] = BODY
) -> tuple[Completion | ProviderError, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer(request)

    async def no_sleep(_: float) -> None:
        return None

    client = ProviderClient(
        config, lambda _: KEY, transport=httpx.MockTransport(handler), sleep=no_sleep
    )
    try:
        return asyncio.run(client.complete("haiku", body, deadline_s=30)), seen
    except ProviderError as err:
        return err, seen


def json_answer(
    status: int, payload: Any, **headers: str
) -> Callable[[httpx.Request], httpx.Response]:
    return lambda _: httpx.Response(
        status, json=payload, headers={"content-type": "application/json", **headers}
    )


def test_request_goes_to_messages_with_x_api_key_and_version(config: Config) -> None:
    result, seen = run(config, json_answer(200, MESSAGE, **{"request-id": "req_011"}))
    assert isinstance(result, Completion)
    request = seen[0]
    assert str(request.url) == "https://api.anthropic.com/v1/messages"
    assert request.headers["x-api-key"] == KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.headers["content-type"] == "application/json"
    assert "authorization" not in request.headers
    assert json.loads(request.content) == BODY  # no stream_options added
    AnthropicMessage.model_validate(result.body)
    assert result.request_id == "req_011"
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.cached_tokens) == (23, 11)
    assert result.usage.cache_write_tokens == 7
    assert result.usage.completion_tokens == 2


def sse(*events: tuple[str, dict[str, Any]]) -> bytes:
    return b"".join(
        f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events
    )


START = MESSAGE | {
    "content": [],
    "stop_reason": None,
    "usage": MESSAGE["usage"] | {"output_tokens": 1},
}
EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("message_start", {"type": "message_start", "message": START}),
    ("ping", {"type": "ping"}),
    (
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "let me "},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "see"},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "signature_delta", "signature": "sig=="},
        },
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "content_block_start",
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
    ),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hel"}},
    ),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "lo"}},
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    (
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": '{"city": '},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": '"Oslo"}'},
        },
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 2}),
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 42},
        },
    ),
    ("message_stop", {"type": "message_stop"}),
]


def stream_answer(frames: bytes) -> Callable[[httpx.Request], httpx.Response]:
    return lambda _: httpx.Response(
        200, content=frames, headers={"content-type": "text/event-stream"}
    )


def test_a_stream_is_read_into_its_message(config: Config) -> None:
    result, _ = run(config, stream_answer(sse(*EVENTS)), BODY | {"stream": True})
    assert isinstance(result, Completion)
    message = AnthropicMessage.model_validate(result.body)
    assert message.stop_reason == "tool_use"
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use"]
    assert message.content[0].thinking == "let me see"  # type: ignore[union-attr]
    assert message.content[0].signature == "sig=="  # type: ignore[union-attr]
    assert message.content[1].text == "Hello"  # type: ignore[union-attr]
    assert message.content[2].input == {"city": "Oslo"}  # type: ignore[union-attr]
    assert result.usage is not None
    assert result.usage.completion_tokens == 42  # message_delta's count is cumulative
    assert result.usage.cache_write_tokens == 7


def test_a_stream_cut_before_message_stop_is_maybe_billed(config: Config) -> None:
    result, seen = run(config, stream_answer(sse(*EVENTS[:9])), BODY | {"stream": True})
    assert isinstance(result, ProviderError)
    assert result.maybe_billed
    assert len(seen) == 1  # never paid for twice


def test_an_error_event_mid_stream_ends_the_call(config: Config) -> None:
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    result, _ = run(
        config, stream_answer(sse(*EVENTS[:9], ("error", error))), BODY | {"stream": True}
    )
    assert isinstance(result, ProviderError)
    assert "Overloaded" in result.message
    assert result.maybe_billed


def in_turn(
    answers: Iterator[Callable[[httpx.Request], httpx.Response]],
) -> Callable[[httpx.Request], httpx.Response]:
    """Each request answered by the next answer."""

    def answer(request: httpx.Request) -> httpx.Response:
        return next(answers)(request)

    return answer


def error_body(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_9"}


@pytest.mark.parametrize("status", [529, 500])
def test_overloaded_and_server_errors_are_retried(config: Config, status: int) -> None:
    answers = iter(
        [
            json_answer(status, error_body("overloaded_error", "Overloaded")),
            json_answer(200, MESSAGE),
        ]
    )
    result, _ = run(config, in_turn(answers))
    assert isinstance(result, Completion)
    assert [a.status for a in result.attempts] == [status, 200]


def test_a_rate_limit_waits_its_retry_after(config: Config) -> None:
    answers = iter(
        [
            json_answer(429, error_body("rate_limit_error", "slow down"), **{"retry-after": "3"}),
            json_answer(200, MESSAGE),
        ]
    )
    result, _ = run(config, in_turn(answers))
    assert isinstance(result, Completion)
    assert result.attempts[0].retry_after_s == 3


@pytest.mark.parametrize(
    ("status", "kind", "reason"),
    [
        (401, "authentication_error", AccountReason.auth),
        (403, "permission_error", AccountReason.forbidden),
        (404, "not_found_error", AccountReason.model_not_found),
    ],
)
def test_account_errors_pause_the_model(
    config: Config, status: int, kind: str, reason: AccountReason
) -> None:
    message = "model: claude-nope" if status == 404 else "invalid x-api-key"
    result, seen = run(
        config, json_answer(status, error_body(kind, message), **{"request-id": "req_5"})
    )
    assert isinstance(result, ProviderError)
    assert result.account is reason and result.permanent and len(seen) == 1


def test_invalid_request_is_permanent_and_keeps_the_answer_and_request_id(config: Config) -> None:
    result, seen = run(
        config,
        json_answer(
            400,
            error_body("invalid_request_error", "max_tokens: Field required"),
            **{"request-id": "req_400"},
        ),
    )
    assert isinstance(result, ProviderError)
    assert result.permanent and result.account is None and len(seen) == 1
    assert result.code == "invalid_request_error"
    assert result.answer is not None and result.answer.request_id == "req_400"
    assert result.answer.body["error"]["type"] == "invalid_request_error"


def test_anthropic_rate_limit_headers_are_read() -> None:
    now = dt.datetime(2026, 12, 2, 10, 0, 0, tzinfo=dt.UTC)
    info = RateLimitInfo.from_headers(
        {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "49",
            "anthropic-ratelimit-requests-reset": "2026-12-02T10:00:01.5Z",
            "anthropic-ratelimit-tokens-limit": "30000",
            "anthropic-ratelimit-tokens-remaining": "29000",
            "anthropic-ratelimit-tokens-reset": "2026-12-02T10:00:30Z",
        },
        now=now,
    )
    assert info == RateLimitInfo(
        limit_requests=50,
        remaining_requests=49,
        reset_requests_s=1.5,
        limit_tokens=30000,
        remaining_tokens=29000,
        reset_tokens_s=30.0,
    )


def test_message_delta_null_usage_counts_keep_the_message_start_counts(config: Config) -> None:
    """MessageDeltaUsage declares input_tokens and the cache counts Optional (the anthropic
    SDK's own accumulator keeps the earlier count when the delta's is null): a null in
    message_delta must not erase the input billed."""
    start = MESSAGE | {"content": [], "stop_reason": None}
    start["usage"] = MESSAGE["usage"] | {"output_tokens": 1}
    events = [
        ("message_start", {"type": "message_start", "message": start}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "hello"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta",
                           "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": 2, "input_tokens": None,
                                     "cache_creation_input_tokens": None,
                                     "cache_read_input_tokens": None}}),
        ("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip
    result, _ = run(config, stream_answer(sse(*events)), BODY | {"stream": True})
    assert isinstance(result, Completion)
    assert result.usage is not None
    # billed: 5 input + 7 written + 11 read, as message_start said
    assert (result.usage.prompt_tokens, result.usage.cache_write_tokens) == (23, 7)
    AnthropicMessage.model_validate(result.body)  # and the Message's usage is an int


def test_a_usage_without_its_input_count_is_not_booked_as_zero_input(config: Config) -> None:
    """Anthropic's Usage requires input_tokens (anthropic.types.Usage); a Message whose
    usage lacks it (cut short, or a gateway's) did bill its prompt. chatbatch reads the
    missing count as 0 and books the output alone, below the bill: it should book the
    worst case (usage None) as for an answer without usage, or refuse the usage as
    malformed (StreamError, maybe billed)."""
    message = MESSAGE | {"usage": {"output_tokens": 2}}
    result, _ = run(config, lambda _: httpx.Response(200, json=message))
    if isinstance(result, Completion):
        assert result.usage is None or result.usage.prompt_tokens > 0, result.usage


def test_anthropic_credit_too_low_400_pauses_the_model_as_quota(config: Config) -> None:
    """Anthropic answers an account out of credit with HTTP 400 invalid_request_error
    "Your credit balance is too low to access the Anthropic API. ..." (not 402). No job
    of the model can succeed until someone adds credit: it must pause the model as
    quota (as a 402 or billing_error does), not fail each job one by one as a 400."""
    message = (
        "Your credit balance is too low to access the Anthropic API. Please go to Plans & "
        "Billing to upgrade or purchase credits."
    )
    result, seen = run(
        config, json_answer(400, error_body("invalid_request_error", message),
                            **{"request-id": "req_1"})
    )  # fmt: skip
    assert isinstance(result, ProviderError) and len(seen) == 1
    assert result.account is AccountReason.quota, (result.account, result.message)
