"""Chat request bodies built with the openai SDK's own request types, so mypy checks every
field against the SDK: one body per feature a valid ``/v1/chat/completions`` line may use.

Shared by the unit test of job lines (``test_sdk_fidelity``) and the round trip through
``local run`` (``tests/integration/test_sdk_lines``).
"""

from __future__ import annotations

from openai.types.chat import (
    ChatCompletionAssistantMessageParam,
    ChatCompletionContentPartImageParam,
    ChatCompletionContentPartTextParam,
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageParam,
    ChatCompletionToolMessageParam,
    ChatCompletionUserMessageParam,
)
from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming

TEXT: ChatCompletionContentPartTextParam = {"type": "text", "text": "What is in the picture?"}
IMAGE: ChatCompletionContentPartImageParam = {
    "type": "image_url",
    "image_url": {"url": "https://example.com/cat.png", "detail": "low"},
}
USER_PARTS: ChatCompletionUserMessageParam = {"role": "user", "content": [TEXT, IMAGE]}
WEATHER: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
CALL: ChatCompletionAssistantMessageParam = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ],
}
RESULT: ChatCompletionToolMessageParam = {
    "role": "tool",
    "tool_call_id": "call_1",
    "content": [{"type": "text", "text": "18 C, sunny"}],
}
HISTORY: list[ChatCompletionMessageParam] = [
    {"role": "developer", "content": "Answer briefly."},
    {"role": "user", "content": "Weather in Paris?", "name": "ana"},
    CALL,
    RESULT,
]


def bodies(model: str) -> dict[str, CompletionCreateParamsNonStreaming]:
    """custom_id -> a body for ``model`` (ids chosen to need hashing in keys)."""
    return {
        "request 1": {
            "model": model,
            "messages": [{"role": "system", "content": [TEXT]}, USER_PARTS],
            "max_completion_tokens": 60,
        },
        "task/1": {
            "model": model,
            "messages": HISTORY,
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": False,
            "max_tokens": 50,
        },
        "schema ünï": {
            "model": model,
            "messages": [{"role": "user", "content": "Name a colour as JSON."}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "colour",
                    "strict": True,
                    "schema": {
                        "type": "object",
                        "properties": {"name": {"type": "string"}},
                        "required": ["name"],
                        "additionalProperties": False,
                    },
                },
            },
            "max_completion_tokens": 40,
        },
        "sampling": {
            "model": model,
            "messages": [{"role": "user", "content": "Say hi."}],
            "n": 3,
            "logprobs": True,
            "top_logprobs": 2,
            "seed": 7,
            "stop": ["\n\n", "END"],
            "user": "user-42",
            "metadata": {"team": "search"},
            "service_tier": "auto",
            "temperature": 0.5,
            "top_p": 0.9,
            "max_completion_tokens": 30,
        },
    }
