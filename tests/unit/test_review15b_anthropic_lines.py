"""Adversarial review of issue 15's Anthropic half (i15-lines, merged): promises about
Anthropic Message Batches lines run translated on OpenAI-kind providers that do not hold.

Each test is named for the broken promise; every one fails on main at 7752dc6.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from anthropic.types import Message
from anthropic.types.messages import MessageBatchIndividualResponse

from chatbatch.client.submit import plan_file
from chatbatch.core.config import Config, Priority
from chatbatch.core.job_lines import parse_job
from chatbatch.core.jobs import JobError
from chatbatch.core.output_lines import JobFacts, OutputLine
from chatbatch.translate.batch_results import anthropic_line, written
from chatbatch.translate.completion_to_message import completion_to_message

MODEL = "gpt-4.1"


def line(**params: Any) -> dict[str, Any]:
    say = [{"role": "user", "content": "hi"}]
    return {
        "custom_id": "a",
        "params": {"model": MODEL, "max_tokens": 50, "messages": say} | params,
    }


def completion(message: dict[str, Any], reason: str | None, usage: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "message": message, "finish_reason": reason}],
    }
    if usage is not None:
        body["usage"] = usage
    return body


USAGE = {"prompt_tokens": 30, "completion_tokens": 7, "total_tokens": 37}
CALL = {"type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}


# --- 1. an accepted line whose answer silently changes ---------------------------------


def test_a_prefilled_last_assistant_turn_is_not_silently_answered_afresh(config: Config) -> None:
    """Promise (messages_to_chat docstring, README): what an OpenAI-kind provider cannot
    honour is refused at submit, "because the answer would differ". Anthropic continues a
    final assistant turn (prefill: '{' to force JSON, 'The answer is'); a chat completion
    answers a new turn, so the answer silently changes. Expected: refused naming the turn
    (or honoured); observed: accepted and sent as an ordinary assistant message."""
    data = line(
        messages=[
            {"role": "user", "content": "Give me the capital of France as JSON."},
            {"role": "assistant", "content": '{"capital": "'},
        ]
    )
    with pytest.raises(JobError) as err:
        parse_job(data, config, seq=1)
    assert err.value.field.startswith("params.messages[1]")


# --- 2. an Anthropic-valid line refused, naming a field the line does not have ---------------


def test_an_empty_final_assistant_turn_is_accepted_or_refused_naming_the_lines_own_field(
    config: Config,
) -> None:
    """Promise (README, job_lines): errors name the line's field. Anthropic accepts an empty
    final assistant turn (only the final assistant message may be empty). chatbatch refuses
    it naming ``body.messages[2]``, a field of its own translation (system moved first),
    where the line's field is ``params.messages[1]``."""
    data = line(
        system="Be brief.",
        messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": []}],
    )
    try:
        parse_job(data, config, seq=1)
    except JobError as err:
        assert err.field.startswith("params.messages[1]"), err.field


# --- 3. answers translated back wrong --------------------------------------------------------


@pytest.mark.parametrize("tool_choice", [{"type": "tool", "name": "weather"}, {"type": "any"}])
def test_a_forced_tool_call_is_stop_reason_tool_use(
    config: Config, tool_choice: dict[str, Any]
) -> None:
    """Promise (completion_to_message): tool calls -> ``tool_use`` blocks and stop_reason
    ``tool_use``. OpenAI answers a forced call (tool_choice a named function, and often
    ``required``; Gemini's OpenAI endpoint even for auto) with ``finish_reason: "stop"``.
    Observed: ``end_turn`` beside tool_use blocks, so an Anthropic agent loop (``if
    stop_reason == "tool_use"``) never runs the tool. Expected: ``tool_use``."""
    tools = [{"name": "weather", "input_schema": {"type": "object"}}]
    job = parse_job(line(tools=tools, tool_choice=tool_choice), config, seq=1)
    assert job.request_body(config.models[MODEL])["tool_choice"] in (
        "required",
        {"type": "function", "function": {"name": "weather"}},
    )
    body = completion(
        {"role": "assistant", "content": None, "tool_calls": [CALL | {"id": "c1"}]}, "stop", USAGE
    )
    message = Message.model_validate(completion_to_message(body))
    assert [b.type for b in message.content] == ["tool_use"]
    assert message.stop_reason == "tool_use"


@pytest.mark.parametrize(
    "call",
    [CALL, CALL | {"id": None}],  # no id: a gateway's answer; id None: ChatStream's assembly
    ids=["no-id", "streamed-id-none"],
)
def test_every_completion_has_a_message_even_a_tool_call_without_an_id(
    call: dict[str, Any],
) -> None:
    """Promise (completion_to_message): "Nothing is refused: every completion has a
    Message". A tool call without ``id`` (chatbatch's own SSE assembler leaves ``id: None``
    when no delta carries one) raises KeyError (collect of the whole batch stops) or gives a
    ``tool_use`` with ``id: null`` that is no ``anthropic.types.Message``."""
    body = completion(
        {"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls", USAGE
    )
    facts = JobFacts(batch_id="b", priority=Priority.normal, model=MODEL)
    stored = OutputLine.answered("b", "j", 200, body, "req_1", facts)
    text, in_results = written("anthropic", stored)
    assert in_results
    MessageBatchIndividualResponse.model_validate_json(text)


def test_an_answer_billed_at_its_worst_case_does_not_report_zero_usage() -> None:
    """Promise (README "How cost is computed", usage_estimated): an answer that came without
    usage is billed at its worst case. Its Anthropic result's ``message.usage`` says 0
    input and 0 output tokens (made up: OpenAI's shape keeps the body as sent), so summing
    ``usage`` over the results file undercounts what was paid. Expected: the usage booked
    (the worst case), as the cost record has it."""
    body = completion({"role": "assistant", "content": "hi"}, "stop", None)
    facts = JobFacts(
        batch_id="b",
        priority=Priority.normal,
        model=MODEL,
        cost_usd=Decimal("0.4096"),
        usage_estimated=True,
    )
    data = anthropic_line(OutputLine.answered("b", "j", 200, body, "req_1", facts))
    result = MessageBatchIndividualResponse.model_validate(data).result
    assert result.type == "succeeded"
    assert result.message.usage.input_tokens + result.message.usage.output_tokens > 0


# --- 4. the results shape of a batch of Anthropic lines ---------------------------------------


def test_a_file_of_only_invalid_anthropic_lines_is_answered_in_anthropic_form(
    config: Config, tmp_path: Path
) -> None:
    """Promise (README "Anthropic results"): a batch submitted as Anthropic lines is written
    in Anthropic's results format, one file. The form is taken from the first VALID line,
    so a file whose Anthropic lines are all refused (e.g. every line without max_tokens,
    the commonest first mistake) is an OpenAI-form batch: its errors go to an OpenAI-shaped
    errors file. Expected: the form of the file's lines (``line_form``), valid or not."""
    path = tmp_path / "jobs.jsonl"
    lines = [
        {
            "custom_id": f"r{i}",
            "params": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        }
        for i in range(2)
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    plan = plan_file(path, config, "b-1", Priority.normal)
    assert plan.invalid == 2
    assert plan.form == "anthropic"


def test_a_search_result_block_is_not_refused_as_a_server_tools_block(config: Config) -> None:
    """Promise (README): refused blocks are refused "because what they bill cannot be
    bounded" (documents, server tools and their blocks). A ``search_result`` block
    (``anthropic.types.SearchResultBlockParam``, GA in the 2.15 SDK's MessageParam) is
    client-supplied text, billed as prompt tokens like a text block; it is refused as if
    it were a server tool's block that "bills per use". Expected: accepted (its text
    counted, sent as text parts on an OpenAI-kind provider), or refused for a true reason."""
    block = {
        "type": "search_result",
        "source": "https://example.com/a",
        "title": "A",
        "content": [{"type": "text", "text": "Paris is the capital of France."}],
    }
    data = line(
        messages=[{"role": "user", "content": [block, {"type": "text", "text": "capital?"}]}]
    )
    try:
        parse_job(data, config, seq=1)
    except JobError as err:
        assert "per use" not in str(err), str(err)
