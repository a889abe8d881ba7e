"""The provider's HTTP answer kept for the output line: its ``x-request-id`` on an answer
and on a refusal, and a refusal's body as the provider sent it (type and param kept), the
API key hidden wherever the body echoes it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from chatbatch.core.config import Config
from chatbatch.provider.attempt import Completion
from chatbatch.provider.client import ProviderClient
from chatbatch.provider.errors import HttpAnswer, ProviderError
from chatbatch.provider.keys import REDACTED

KEY = "sk-secret-key-1234567890"
BODY: dict[str, Any] = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}]}
ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "deepseek-chat",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


def call(config: Config, status: int, content: bytes, headers: dict[str, str]) -> Any:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=content, headers=headers)

    client = ProviderClient(config, lambda _: KEY, transport=httpx.MockTransport(answer))
    try:
        return asyncio.run(client.complete("deepseek-chat", BODY, deadline_s=10))
    except ProviderError as err:
        return err


def test_an_answer_carries_its_x_request_id(config: Config) -> None:
    headers = {"content-type": "application/json", "x-request-id": "req_42"}
    completion = call(config, 200, json.dumps(ANSWER).encode(), headers)
    assert isinstance(completion, Completion) and completion.request_id == "req_42"


def test_a_refusal_keeps_the_providers_answer_as_sent_with_the_key_hidden(
    config: Config,
) -> None:
    error = {
        "message": f"Incorrect value for 'temperature' (key {KEY})",
        "type": "invalid_request_error",
        "param": "temperature",
        "code": "invalid_value",
    }
    headers = {"content-type": "application/json", "x-request-id": "req_7"}
    err = call(config, 400, json.dumps({"error": error}).encode(), headers)
    assert isinstance(err, ProviderError) and err.permanent
    sent = error | {"message": f"Incorrect value for 'temperature' (key {REDACTED})"}
    assert err.answer == HttpAnswer(status=400, request_id="req_7", body={"error": sent})


@pytest.mark.parametrize("content", [b"<html>Bad Request</html>", b"", b"[1, 2]"])
def test_a_refusal_without_a_json_object_body_is_wrapped_in_openais_error_shape(
    config: Config, content: bytes
) -> None:
    err = call(config, 400, content, {})
    assert isinstance(err, ProviderError) and err.answer is not None
    assert (err.answer.status, err.answer.request_id) == (400, None)
    error = err.answer.body["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "http_error"
    assert error["message"] == (content.decode() or "Bad Request")
