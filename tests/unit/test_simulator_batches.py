"""The simulator's batch APIs, driven by the official SDKs on 127.0.0.1 (the conformance
check: every answer parses as the SDK's own types): OpenAI's Files + Batches and
Anthropic's Message Batches accept what the providers accept, refuse what they refuse,
answer each line as the synchronous endpoint answers the same body, and bill only the
lines answered, apart from the synchronous calls and outside their rate limits. Time is
the test's own clock, handed to the simulator: a batch moves only when the test says."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anthropic
import httpx
import openai
import pytest
from anthropic.types import Message
from anthropic.types.messages import MessageBatch, MessageBatchIndividualResponse
from openai.types import Batch
from openai.types.chat import ChatCompletion

from chatbatch.local.simulator import (
    Simulator,
    SimulatorSettings,
    anthropic_batches,
    openai_batches,
)

KEY = "sk-sim-batch"
MODEL = "gpt-4o-mini"
CLAUDE = "claude-haiku-4-5"
TURNAROUND_S = 10.0


class Clock:
    """The simulator's clock, moved by the test (read from the server's thread)."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@contextmanager
def batch_simulator(
    clock: Clock, key: str, models: list[str], **settings: Any
) -> Iterator[Simulator]:
    """The simulator on the test's clock, answering its batches after ``TURNAROUND_S``."""
    config = SimulatorSettings(
        api_key=key,
        config_models=False,
        models=models,
        batch_turnaround_s=TURNAROUND_S,
        **settings,
    )
    with Simulator(config, clock=clock) as running:
        yield running


@pytest.fixture
def sim(clock: Clock) -> Iterator[Simulator]:
    # one synchronous request a minute: the batches must not need more
    with batch_simulator(clock, KEY, [MODEL, "gpt-4.1", CLAUDE], rpm=1) as running:
        yield running


@pytest.fixture
def oai(sim: Simulator) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.base_url, api_key=KEY, max_retries=0)


@pytest.fixture
def claude(sim: Simulator) -> anthropic.Anthropic:
    # anthropic 2.15.0 sends api_key as "Authorization: Bearer", which the simulator's
    # Messages API refuses (it wants x-api-key, as Anthropic documents): send both
    headers = {"x-api-key": KEY}
    return anthropic.Anthropic(
        base_url=sim.url, api_key=KEY, max_retries=0, default_headers=headers
    )


def chat_body(text: str, model: str = MODEL, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": text}]
    return {"model": model, "messages": messages, "max_completion_tokens": 16, **extra}


def line(custom_id: str, body: dict[str, Any], url: str = "/v1/chat/completions") -> bytes:
    item = {"custom_id": custom_id, "method": "POST", "url": url, "body": body}
    return json.dumps(item).encode() + b"\n"


def submit(oai: openai.OpenAI, data: bytes) -> Batch:
    uploaded = oai.files.create(file=("requests.jsonl", data), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == len(data)
    batch = oai.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "test"},
    )
    assert batch.status == "validating" and batch.metadata == {"job": "test"}
    return batch


def jsonl(oai: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    text = oai.files.content(file_id).text
    return [json.loads(t) for t in text.splitlines()]


def batch_bill(sim: Simulator, model: str) -> tuple[int, int, int]:
    bill = sim.stats().batch_billed_by_model.get(model)
    return (bill.calls, bill.prompt_tokens, bill.completion_tokens) if bill else (0, 0, 0)


def usage_sum(bodies: list[dict[str, Any]]) -> tuple[int, int, int]:
    usages = [b["usage"] for b in bodies]
    return (
        len(usages),
        sum(u["prompt_tokens"] for u in usages),
        sum(u["completion_tokens"] for u in usages),
    )


# -- OpenAI -------------------------------------------------------------------------------


def test_each_line_is_answered_as_the_chat_endpoint_answers_it(
    sim: Simulator, oai: openai.OpenAI, clock: Clock
) -> None:
    bodies = [chat_body(f"question number {i}") for i in range(3)]
    synchronous = []
    for body in bodies:
        synchronous.append(oai.chat.completions.create(**body).model_dump())
        clock.advance(61)  # rpm=1: the synchronous calls wait their turn
    sim.reset()  # the same cache state for the batch (and its files and batches forgotten)
    batch = submit(oai, b"".join(line(f"req-{i}", b) for i, b in enumerate(bodies)))
    running = oai.batches.retrieve(batch.id)
    assert running.status == "in_progress" and running.model == MODEL
    assert running.request_counts is not None and running.request_counts.total == 3
    clock.advance(TURNAROUND_S)
    done = oai.batches.retrieve(batch.id)
    assert done.status == "completed" and done.error_file_id is None
    assert done.completed_at is not None and done.in_progress_at is not None
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (3, 0)
    outputs = jsonl(oai, done.output_file_id)
    assert [o["custom_id"] for o in outputs] == ["req-0", "req-1", "req-2"]
    for output, expected in zip(outputs, synchronous, strict=True):
        assert output["error"] is None and output["response"]["status_code"] == 200
        answer = ChatCompletion.model_validate(output["response"]["body"]).model_dump()
        assert {k: v for k, v in answer.items() if k not in ("id", "created")} == {
            k: v for k, v in expected.items() if k not in ("id", "created")
        }
    answered = [o["response"]["body"] for o in outputs]
    stats = sim.stats()
    assert stats.requests == 0 and stats.billed_calls == 0  # no synchronous window touched
    assert batch_bill(sim, MODEL) == usage_sum(answered)
    assert done.usage is not None and done.usage.input_tokens == usage_sum(answered)[1]


def test_files_and_batches_are_listed_read_and_deleted(oai: openai.OpenAI, clock: Clock) -> None:
    ids = [submit(oai, line("a", chat_body(f"text {i}"))).id for i in range(3)]
    listed = [b.id for b in oai.batches.list(limit=2)]  # the SDK follows the pages
    assert listed == list(reversed(ids))
    first = oai.batches.retrieve(ids[0])
    found = oai.files.retrieve(first.input_file_id)
    assert found.filename == "requests.jsonl" and found.purpose == "batch"
    assert oai.files.delete(found.id).deleted
    with pytest.raises(openai.NotFoundError) as missing:
        oai.files.retrieve(found.id)
    assert missing.value.code is None and "No such File object" in missing.value.message
    with pytest.raises(openai.NotFoundError) as unknown:
        oai.batches.retrieve("batch_nope")
    assert set(unknown.value.body) == {"message", "type", "param", "code"}  # type: ignore[arg-type]
    assert unknown.value.type == "invalid_request_error"
    clock.advance(TURNAROUND_S)
    output = oai.files.retrieve(str(oai.batches.retrieve(ids[1]).output_file_id))
    assert output.purpose == "batch_output"


@pytest.mark.parametrize(
    ("lines", "code", "number"),
    [
        ([line("a", chat_body("x")), line("a", chat_body("y"))], "duplicate_custom_id", 2),
        ([line("a", chat_body("x")), line("b", chat_body("y", "gpt-4.1"))], "mismatched_model", 2),
        ([line("a", chat_body("x"), url="/v1/embeddings")], "invalid_url", 1),
        ([line("a", chat_body("x")), b"{not json\n"], "invalid_json_line", 2),
        ([line(str(i), chat_body("x")) for i in range(3)], "too_many_tasks", None),
        (
            [b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions"}\n'],
            "missing_required_parameter",
            1,
        ),
    ],
)
def test_a_bad_file_fails_the_batch(
    monkeypatch: pytest.MonkeyPatch,
    oai: openai.OpenAI,
    lines: list[bytes],
    code: str,
    number: int | None,
) -> None:
    monkeypatch.setattr(openai_batches, "MAX_LINES", 2)
    batch = submit(oai, b"".join(lines))
    failed = oai.batches.retrieve(batch.id)
    assert failed.status == "failed" and failed.failed_at is not None
    assert failed.errors is not None and failed.errors.data
    error = failed.errors.data[0]
    assert (error.code, error.line) == (code, number)
    assert failed.output_file_id is None and failed.error_file_id is None


def test_the_files_api_refuses_what_openai_refuses(oai: openai.OpenAI, sim: Simulator) -> None:
    with pytest.raises(openai.BadRequestError, match="jsonl"):
        oai.files.create(file=("requests.csv", b"a,b\n"), purpose="batch")
    with pytest.raises(openai.BadRequestError) as bad_purpose:
        oai.files.create(file=("r.jsonl", b"{}\n"), purpose="nonsense")  # type: ignore[arg-type]
    assert bad_purpose.value.param == "purpose"
    other = oai.files.create(file=("r.jsonl", line("a", chat_body("x"))), purpose="user_data")
    with pytest.raises(openai.BadRequestError, match="purpose 'batch'"):
        oai.batches.create(
            input_file_id=other.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    stranger = openai.OpenAI(base_url=sim.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.batches.retrieve(other.id)


def test_a_body_the_chat_api_refuses_gets_its_error_in_the_error_file(
    sim: Simulator, oai: openai.OpenAI, clock: Clock
) -> None:
    data = line("good", chat_body("fine")) + line("hot", chat_body("x", temperature=5))
    data += line("empty", {"model": MODEL, "messages": []})
    batch = submit(oai, data)
    clock.advance(TURNAROUND_S)
    done = oai.batches.retrieve(batch.id)
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 2)
    outputs, errors = jsonl(oai, done.output_file_id), jsonl(oai, done.error_file_id)
    assert [o["custom_id"] for o in outputs] == ["good"]
    assert {e["custom_id"]: e["response"]["body"]["error"]["param"] for e in errors} == {
        "hot": "temperature",
        "empty": "messages",
    }
    assert all(e["response"]["status_code"] == 400 and e["error"] is None for e in errors)
    assert batch_bill(sim, MODEL) == usage_sum([o["response"]["body"] for o in outputs])


def test_a_cancel_mid_batch_keeps_what_was_answered(
    sim: Simulator, oai: openai.OpenAI, clock: Clock
) -> None:
    batch = submit(oai, b"".join(line(f"r{i}", chat_body(f"q {i}")) for i in range(4)))
    clock.advance(TURNAROUND_S / 2)  # lines 0 and 1 are due
    assert oai.batches.retrieve(batch.id).request_counts == openai.types.BatchRequestCounts(
        total=4, completed=2, failed=0
    )
    cancelling = oai.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    clock.advance(TURNAROUND_S)
    cancelled = oai.batches.retrieve(batch.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
    outputs, errors = jsonl(oai, cancelled.output_file_id), jsonl(oai, cancelled.error_file_id)
    assert [o["custom_id"] for o in outputs] == ["r0", "r1"]
    assert [(e["custom_id"], e["error"]["code"], e["response"]) for e in errors] == [
        ("r2", "batch_cancelled", None),
        ("r3", "batch_cancelled", None),
    ]
    assert batch_bill(sim, MODEL) == usage_sum([o["response"]["body"] for o in outputs])
    with pytest.raises(openai.BadRequestError, match="cancelled"):
        oai.batches.cancel(batch.id)


def test_a_batch_expires_part_way(sim: Simulator, oai: openai.OpenAI, clock: Clock) -> None:
    sim.configure(batch_expire_after_s=TURNAROUND_S / 2)
    batch = submit(oai, b"".join(line(f"r{i}", chat_body(f"q {i}")) for i in range(4)))
    clock.advance(TURNAROUND_S)
    expired = oai.batches.retrieve(batch.id)
    assert expired.status == "expired" and expired.expired_at == expired.expires_at
    outputs, errors = jsonl(oai, expired.output_file_id), jsonl(oai, expired.error_file_id)
    assert [o["custom_id"] for o in outputs] == ["r0", "r1"]
    assert [e["error"]["code"] for e in errors] == ["batch_expired", "batch_expired"]
    assert expired.request_counts == openai.types.BatchRequestCounts(total=4, completed=2, failed=2)
    assert batch_bill(sim, MODEL) == usage_sum([o["response"]["body"] for o in outputs])


def admin(sim: Simulator, path: str) -> httpx.Response:
    headers = {"authorization": f"Bearer {KEY}"}
    return httpx.post(f"{sim.url}/admin/{path}", headers=headers, timeout=5)


def test_the_admin_expires_or_fails_a_running_batch(
    sim: Simulator, oai: openai.OpenAI, clock: Clock
) -> None:
    first = submit(oai, b"".join(line(f"r{i}", chat_body(f"q {i}")) for i in range(4)))
    clock.advance(TURNAROUND_S / 4)  # one line is due
    assert admin(sim, f"batches/{first.id}/expire").json()["status"] == "expired"
    expired = oai.batches.retrieve(first.id)
    assert expired.request_counts == openai.types.BatchRequestCounts(total=4, completed=1, failed=3)
    third = submit(oai, line("only", chat_body("q")))
    failed = Batch.model_validate(admin(sim, f"batches/{third.id}/fail").json())
    assert failed.status == "failed" and failed.errors and failed.errors.data
    assert admin(sim, f"batches/{third.id}/fail").status_code == 400  # it has ended
    assert admin(sim, f"batches/{third.id}/melt").status_code == 404


# -- Anthropic ----------------------------------------------------------------------------


def message_params(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": CLAUDE,
        "max_tokens": 32,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def requests_of(count: int) -> list[dict[str, Any]]:
    return [{"custom_id": f"r{i}", "params": message_params(f"q {i}")} for i in range(count)]


def results(claude: anthropic.Anthropic, batch_id: str) -> list[MessageBatchIndividualResponse]:
    return list(claude.messages.batches.results(batch_id))


def succeeded(found: list[MessageBatchIndividualResponse]) -> list[Message]:
    return [r.result.message for r in found if r.result.type == "succeeded"]


def message_bill(messages: list[Message]) -> tuple[int, int, int]:
    prompt = [
        m.usage.input_tokens
        + (m.usage.cache_creation_input_tokens or 0)
        + (m.usage.cache_read_input_tokens or 0)
        for m in messages
    ]
    return len(messages), sum(prompt), sum(m.usage.output_tokens for m in messages)


def test_message_batches_answer_as_the_messages_endpoint(
    sim: Simulator, claude: anthropic.Anthropic, clock: Clock
) -> None:
    params = [message_params(f"question {i}") for i in range(3)]
    synchronous = []
    for body in params:
        synchronous.append(claude.messages.create(**body))
        clock.advance(61)
    sim.reset()
    batch = claude.messages.batches.create(
        requests=[{"custom_id": f"r{i}", "params": p} for i, p in enumerate(params)]  # type: ignore[misc]
    )
    assert batch.processing_status == "in_progress" and batch.results_url is None
    clock.advance(TURNAROUND_S / 2)
    running = claude.messages.batches.retrieve(batch.id)
    assert running.request_counts.processing == 3  # tallied only once the batch ends
    assert running.request_counts.succeeded == 0
    clock.advance(TURNAROUND_S)
    ended = claude.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended" and ended.ended_at is not None
    assert ended.request_counts.succeeded == 3 and ended.request_counts.processing == 0
    found = results(claude, batch.id)
    assert [r.custom_id for r in found] == ["r0", "r1", "r2"]
    for message, expected in zip(succeeded(found), synchronous, strict=True):
        assert message.model_dump(exclude={"id"}) == expected.model_dump(exclude={"id"})
    assert sim.stats().requests == 0
    assert batch_bill(sim, CLAUDE) == message_bill(succeeded(found))
    assert [b.id for b in claude.messages.batches.list(limit=1)] == [batch.id]
    assert claude.messages.batches.delete(batch.id).type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError) as gone:
        claude.messages.batches.retrieve(batch.id)
    assert gone.value.body["type"] == "error"  # type: ignore[index]
    assert gone.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


def test_params_are_validated_when_their_line_runs(
    sim: Simulator, claude: anthropic.Anthropic, clock: Clock
) -> None:
    batch = claude.messages.batches.create(
        requests=[  # type: ignore[list-item]
            {"custom_id": "good", "params": message_params("fine")},
            {
                "custom_id": "no-cap",
                "params": {"model": CLAUDE, "messages": [{"role": "user", "content": "x"}]},
            },
            {"custom_id": "hot", "params": message_params("x", temperature=3)},
            {"custom_id": "streamed", "params": message_params("x", stream=True)},
        ]
    )
    clock.advance(TURNAROUND_S)
    found = results(claude, batch.id)
    kinds = {r.custom_id: r.result.type for r in found}
    assert kinds == {
        "good": "succeeded",
        "no-cap": "errored",
        "hot": "errored",
        "streamed": "errored",
    }
    for item in found:
        if item.result.type == "errored":
            assert item.result.error.error.type == "invalid_request_error"
    assert batch_bill(sim, CLAUDE) == message_bill(succeeded(found))


@pytest.mark.parametrize(
    "requests",
    [
        [{"custom_id": "has space", "params": message_params("x")}],
        [{"custom_id": "x" * 65, "params": message_params("x")}],
        [{"custom_id": "a", "params": message_params("x")}] * 2,
        [],
        requests_of(3),  # over the (patched) limit of 2
        [{"custom_id": "a", "params": message_params("x"), "extra": 1}],
    ],
)
def test_a_bad_batch_is_refused_at_once(
    monkeypatch: pytest.MonkeyPatch, claude: anthropic.Anthropic, requests: list[Any]
) -> None:
    monkeypatch.setattr(anthropic_batches, "MAX_REQUESTS", 2)
    with pytest.raises(anthropic.BadRequestError) as refused:
        claude.messages.batches.create(requests=requests)
    assert refused.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


def test_a_message_batch_past_its_size_limit_is_too_large(
    monkeypatch: pytest.MonkeyPatch, claude: anthropic.Anthropic
) -> None:
    monkeypatch.setattr(anthropic_batches, "MAX_BYTES", 100)
    with pytest.raises(anthropic.APIStatusError) as refused:
        claude.messages.batches.create(requests=requests_of(2))  # type: ignore[arg-type]
    assert refused.value.status_code == 413
    assert refused.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]


def test_message_batches_need_anthropic_headers(sim: Simulator) -> None:
    url = f"{sim.url}/v1/messages/batches"
    no_version = httpx.get(url, headers={"x-api-key": KEY}, timeout=5)
    assert no_version.status_code == 400 and no_version.json()["type"] == "error"
    no_key = httpx.get(url, headers={"anthropic-version": "2023-06-01"}, timeout=5)
    assert no_key.status_code == 401
    assert no_key.json()["error"]["type"] == "authentication_error"
    assert no_key.headers["request-id"].startswith("req_")


def test_a_cancel_mid_batch_and_an_expiry_part_way(
    sim: Simulator, claude: anthropic.Anthropic, clock: Clock
) -> None:
    batches = claude.messages.batches
    cancelled = batches.create(requests=requests_of(4))  # type: ignore[arg-type]
    with pytest.raises(anthropic.BadRequestError, match="processing"):
        batches.delete(cancelled.id)
    sim.configure(batch_expire_after_s=TURNAROUND_S / 2)
    expiring = batches.create(requests=requests_of(4))  # type: ignore[arg-type]
    clock.advance(TURNAROUND_S / 2)
    canceling = batches.cancel(cancelled.id)
    assert canceling.processing_status == "canceling"
    assert canceling.cancel_initiated_at is not None
    clock.advance(TURNAROUND_S)
    ended = batches.retrieve(cancelled.id)
    assert ended.processing_status == "ended"
    assert (ended.request_counts.succeeded, ended.request_counts.canceled) == (2, 2)
    expired = batches.retrieve(expiring.id)
    assert (expired.request_counts.succeeded, expired.request_counts.expired) == (2, 2)
    kinds = [r.result.type for r in results(claude, expiring.id)]
    assert kinds == ["succeeded", "succeeded", "expired", "expired"]
    answered = succeeded(results(claude, cancelled.id)) + succeeded(results(claude, expiring.id))
    assert batch_bill(sim, CLAUDE) == message_bill(answered)
    with pytest.raises(anthropic.BadRequestError, match="ended"):
        batches.cancel(cancelled.id)
    with pytest.raises(anthropic.NotFoundError):
        batches.retrieve("msgbatch_nope")


# -- both lists -----------------------------------------------------------------------


def test_both_lists_page_newest_first_as_the_sdks_read_them(
    oai: openai.OpenAI, claude: anthropic.Anthropic, clock: Clock
) -> None:
    """Each page is the API's own list object (OpenAI ``object``, ``data``, ``first_id``,
    ``last_id``, ``has_more``; Anthropic without ``object``), each batch in it exactly
    the SDK's type's fields; ``after`` / ``after_id`` walks to older batches, Anthropic's
    ``before_id`` to newer ones (the nearest first, ``has_more`` looking that way), and
    the SDKs' own paging follows them."""
    openai_ids = [submit(oai, line("a", chat_body(f"t {i}"))).id for i in range(5)][::-1]
    batches = claude.messages.batches
    claude_ids = [batches.create(requests=requests_of(1)).id for _ in range(5)][::-1]  # type: ignore[arg-type]
    clock.advance(TURNAROUND_S / 2)
    assert [b.id for b in oai.batches.list(limit=2)] == openai_ids
    assert [b.id for b in batches.list(limit=2)] == claude_ids
    assert [b.id for b in batches.list(limit=2, before_id=claude_ids[4])] == (
        claude_ids[2:4] + claude_ids[:2]
    )
    oai_page, claude_page = oai.batches.with_raw_response.list, batches.with_raw_response.list
    pages = [  # (the page as sent, its batches, has_more, the SDK's type of a batch)
        (oai_page(limit=2, after=openai_ids[1]), openai_ids[2:4], True, Batch),
        (oai_page(limit=2, after=openai_ids[3]), openai_ids[4:], False, Batch),
        (claude_page(limit=2, after_id=claude_ids[1]), claude_ids[2:4], True, MessageBatch),
        (claude_page(limit=2, before_id=claude_ids[4]), claude_ids[2:4], True, MessageBatch),
        (claude_page(limit=2, before_id=claude_ids[2]), claude_ids[:2], False, MessageBatch),
    ]
    for raw, ids, more, kind in pages:
        page = raw.http_response.json()
        listing = {"object", "data", "first_id", "last_id", "has_more"}
        assert set(page) == (listing if kind is Batch else listing - {"object"})
        assert [b["id"] for b in page["data"]] == ids and page["has_more"] is more
        assert (page["first_id"], page["last_id"]) == (ids[0], ids[-1])
        for item in page["data"]:  # every field the SDK's, and read back as sent
            assert set(item) == set(kind.model_fields)
            for key, value in kind.model_validate(item).to_dict().items():
                assert as_sent(value) == item[key], key


def as_sent(value: Any) -> Any:
    """A field the SDK read, as the simulator sent it (Anthropic's times RFC 3339, to ms)."""
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return value


def test_a_batch_line_takes_only_the_faults_a_batch_line_can_get() -> None:
    """A batch line has no connection: a hang, a reset or a cut body is refused at
    injection (the admin endpoint's 400), the others are queued for the batch lines."""
    from chatbatch.local.simulator import Engine, Fault, FaultKind, SimulatorSettings

    engine = Engine(SimulatorSettings(config_models=False))
    for kind in (FaultKind.hang, FaultKind.reset, FaultKind.truncate):
        with pytest.raises(ValueError, match=kind.value):
            engine.inject_batch([Fault(kind=kind)])
    engine.inject_batch([Fault(kind=FaultKind.no_usage), Fault(kind=FaultKind.bad_request)])
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    status, answer = engine._chat_line(body)
    assert status == 200 and "usage" not in answer
    status, refusal = engine._chat_line(body)
    assert status == 400 and refusal["error"]["type"] == "invalid_request_error"
    status, answer = engine._chat_line(body)  # the script is spent: a whole answer
    assert status == 200 and answer["usage"]["completion_tokens"] > 0
    assert engine.stats().batch_billed_by_model["m"].calls == 2  # the refusal unbilled
