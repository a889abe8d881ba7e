"""The server-sent-events parser and the chat stream assembler, fed bytes in any chunks."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chatbatch.provider.sse import ChatStream, SSEEvent, SSEParser, StreamError


def _chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m"}
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return head | {"choices": [choice]} | extra


USAGE = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}

# An OpenAI/DeepSeek-style stream: keep-alive comments and blank lines while the request
# waits, CRLF line ends in places, a `choices: null` usage chunk, then [DONE].
STREAM = (
    b": keep-alive\n\n"
    b"\n"
    b": keep-alive\r\n\r\n"
    + b"data: "
    + json.dumps(_chunk({"role": "assistant", "content": ""})).encode()
    + b"\n\n"
    + b"data: "
    + json.dumps(_chunk({"content": "Hel"})).encode()
    + b"\r\n\r\n"
    + b"data: "
    + json.dumps(_chunk({"content": "lo, w\u00f6rld \u4e16\u754c"}), ensure_ascii=False).encode()
    + b"\n\n: keep-alive\n\n"
    + b"data: "
    + json.dumps(_chunk({}, "stop")).encode()
    + b"\n\n"
    + b"data: "
    + json.dumps({"id": "chatcmpl-1", "choices": None, "usage": USAGE}).encode()
    + b"\n\n"
    + b"data: [DONE]\n\n"
)

EXPECTED = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 7,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello, w\u00f6rld \u4e16\u754c"},
            "finish_reason": "stop",
        }
    ],
    "usage": USAGE,
}


def _events(chunks: list[bytes]) -> list[SSEEvent]:
    parser = SSEParser()
    events = [e for chunk in chunks for e in parser.feed(chunk)]
    return events + parser.close()


def _assemble(chunks: list[bytes]) -> dict[str, Any]:
    stream = ChatStream()
    for event in _events(chunks):
        stream.add(event)
    return stream.result()


def test_a_stream_fed_byte_by_byte_assembles_into_a_chat_completion() -> None:
    body = _assemble([STREAM[i : i + 1] for i in range(len(STREAM))])
    assert body == EXPECTED


def test_every_split_point_gives_the_same_events() -> None:
    whole = _events([STREAM])
    assert len(whole) == 6  # comments and blank lines are not events
    for cut in range(len(STREAM) + 1):
        assert _events([STREAM[:cut], STREAM[cut:]]) == whole, cut


def test_three_way_splits_inside_multibyte_characters_and_crlf() -> None:
    cuts = [i for i in range(1, len(STREAM)) if STREAM[i - 1 : i + 1] in {b"\r\n", b"\xe4\xb8"}]
    assert cuts, "the stream should contain CRLF and multi-byte characters"
    for cut in cuts:
        assert _assemble([STREAM[:cut], STREAM[cut : cut + 1], STREAM[cut + 1 :]]) == EXPECTED


def test_line_endings_cr_lf_and_crlf_all_end_lines() -> None:
    for eol in (b"\n", b"\r", b"\r\n"):
        data = b"data: a" + eol + b"data: b" + eol + eol + b"data: c" + eol + eol
        fed = [data[i : i + 1] for i in range(len(data))]
        assert [e.data for e in _events(fed)] == ["a\nb", "c"], eol


def test_fields_comments_and_no_space_after_colon() -> None:
    data = b":comment\nevent: delta\nid: 42\nretry: 100\ndata:x\ndata\n\ndata: y\n\n"
    assert _events([data]) == [
        SSEEvent(data="x\n", event="delta", id="42"),
        SSEEvent(data="y", event="message", id="42"),
    ]


def test_a_final_event_without_its_blank_line_is_kept_at_close() -> None:
    assert [e.data for e in _events([b"data: [DONE]"])] == ["[DONE]"]
    assert [e.data for e in _events([b"data: [DONE]\n"])] == ["[DONE]"]


def test_invalid_utf8_is_a_stream_error() -> None:
    with pytest.raises(StreamError, match="not UTF-8"):
        SSEParser().feed(b"data: \xff\xfe\n\n")


def test_a_corrupt_chunk_is_a_stream_error() -> None:
    good = STREAM.split(b"\n\ndata: [DONE]")[0]
    with pytest.raises(StreamError, match="corrupt"):
        _assemble([good + b'\n\ndata: {"id": "chatcmpl-1", "choi\n\ndata: [DONE]\n\n'])


@pytest.mark.parametrize(
    "payload",
    [
        b"[1, 2]",
        b'{"choices": [{"delta": "text"}]}',
        b'{"choices": [{"index": "first", "delta": {}}]}',
        b'{"choices": [{"delta": {"tool_calls": [{"function": 5}]}}]}',
        b'{"choices": 7}',
    ],
)
def test_chunks_of_the_wrong_shape_are_stream_errors(payload: bytes) -> None:
    with pytest.raises(StreamError, match="corrupt"):
        _assemble([b"data: " + payload + b"\n\ndata: [DONE]\n\n"])


def test_a_stream_without_done_is_a_stream_error() -> None:
    truncated = STREAM.removesuffix(b"data: [DONE]\n\n")
    with pytest.raises(StreamError, match=r"without data: \[DONE\]"):
        _assemble([truncated])


def test_an_error_event_is_a_stream_error_with_the_providers_message() -> None:
    error = {"error": {"message": "upstream overloaded", "type": "server_error"}}
    frames = [_chunk({"content": "Hel"}), error]
    data = b"".join(b"data: " + json.dumps(f).encode() + b"\n\n" for f in frames)
    with pytest.raises(StreamError, match="upstream overloaded"):
        _assemble([data])


def test_deepseek_usage_on_the_last_choice_chunk_and_reasoning_content() -> None:
    chunks = [
        _chunk({"role": "assistant", "reasoning_content": "think "}),
        _chunk({"reasoning_content": "hard"}),
        _chunk({"content": "42"}),
        _chunk({"content": ""}, "stop", usage=USAGE),
    ]
    data = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    body = _assemble([data + b"data: [DONE]\n\n"])
    message = body["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "42", "reasoning_content": "think hard"}
    assert body["usage"] == USAGE


def test_tool_call_deltas_are_joined() -> None:
    calls = [
        {
            "index": 0,
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_", "arguments": ""},
        },
        {"index": 0, "function": {"name": "weather", "arguments": '{"city": '}},
        {"index": 0, "function": {"arguments": '"Paris"}'}},
    ]
    chunks = [_chunk({"role": "assistant", "tool_calls": [c]}) for c in calls]
    chunks.append(_chunk({}, "tool_calls"))
    data = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    body = _assemble([data, b"data: [DONE]\n\n"])
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ]


def test_empty_choices_and_events_after_done_are_ignored() -> None:
    data = STREAM.replace(b'"choices": null', b'"choices": []') + b"data: garbage\n\n"
    assert _assemble([data]) == EXPECTED
