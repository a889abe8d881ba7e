"""Job lines: every bad line is named by line number and field, good lines normalise."""

from __future__ import annotations

import json

import pytest

from chatbatch.core.config import Config, Priority
from chatbatch.core.job_lines import parse_job, parse_line, parse_lines
from chatbatch.core.jobs import JobError, Message

MSG = [{"role": "user", "content": "hi"}]


def batch_line(body: dict | None = None, **top: object) -> str:
    line = {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions"}
    line["body"] = {"model": "deepseek-chat", "messages": MSG} if body is None else body
    line.update(top)
    return json.dumps(line)


BAD_LINES = [
    # (line text, field, words the message must contain)
    ("{not json", "(line)", "not valid JSON"),
    ('{"prompt": "x", "max_tokens": ' + "9" * 5000 + "}", "(line)", "not valid JSON"),
    ('{"prompt": "x", "metadata": ' + "[" * 50_000 + "]" * 50_000 + "}", "(line)", "not valid"),
    ('["a list"]', "(line)", "must be a JSON object"),
    ('"just a string"', "(line)", "must be a JSON object"),
    ('{"messages": []}', "messages", "must not be empty"),
    ('{"model": "deepseek-chat"}', "messages", "give messages (a list) or prompt"),
    ('{"prompt": "a", "messages": [{"role": "user", "content": "b"}]}', "prompt", "not both"),
    ('{"prompt": ""}', "prompt", "must not be empty"),
    ('{"messages": [{"role": "robot", "content": "x"}]}', "messages[0].role", "'robot'"),
    ('{"messages": [{"role": "user", "content": 5}]}', "messages[0].content", "must be a string"),
    ('{"messages": [{"role": "user"}]}', "messages[0].content", "required field is missing"),
    ('{"messages": [{"role": "user", "content": ["x"]}]}', "messages[0].content", "string"),
    ('{"messages": "hello"}', "messages", "must be a list"),
    ('{"prompt": "x", "model": "gpt-9"}', "model", "unknown model 'gpt-9'"),
    ('{"prompt": "x", "role": "poet"}', "role", "unknown role 'poet'"),
    ('{"prompt": "x", "max_tokens": 0}', "max_tokens", "between 1 and 8192"),
    ('{"prompt": "x", "max_tokens": -5}', "max_tokens", "between 1 and 8192"),
    ('{"prompt": "x", "max_tokens": 9000}', "max_tokens", "between 1 and 8192 for deepseek-chat"),
    ('{"prompt": "x", "max_tokens": "ten"}', "max_tokens", "must be an integer"),
    ('{"prompt": "x", "temperature": 2.5}', "temperature", "must be at most 2"),
    ('{"prompt": "x", "temperature": -0.1}', "temperature", "must be at least 0"),
    ('{"prompt": "x", "priority": "urgent"}', "priority", "'urgent'"),
    ('{"prompt": "x", "stream": "yes"}', "stream", "must be true or false"),
    ('{"prompt": "x", "colour": "red"}', "colour", "unknown field"),
    ('{"prompt": "x", "custom_id": "has space"}', "custom_id", "not allowed"),
    ('{"prompt": "x", "custom_id": ""}', "custom_id", "not allowed"),
    ('{"prompt": "x", "metadata": {"k": 1}}', "metadata.k", "must be a string"),
    ('{"prompt": "x", "batch_id": "a/b"}', "batch_id", "not allowed"),
    (batch_line(url="/v1/embeddings"), "url", "'/v1/chat/completions'"),
    (batch_line(method="GET"), "method", "'POST'"),
    (batch_line(body={"model": "deepseek-chat"}), "body.messages", "required field is missing"),
    (batch_line(body={"model": "nope", "messages": MSG}), "body.model", "unknown model 'nope'"),
    (
        batch_line(body={"model": "gpt-4.1", "messages": MSG, "max_tokens": 40000}),
        "body.max_tokens",
        "between 1 and 32768 for gpt-4.1",
    ),
    (
        batch_line(body={"messages": MSG, "max_tokens": 5, "max_completion_tokens": 5}),
        "body.max_tokens",
        "not both",
    ),
    (batch_line(body={"messages": MSG, "temperature": 7}), "body.temperature", "at most 2"),
]


@pytest.mark.parametrize(("text", "field", "words"), BAD_LINES)
def test_bad_line_names_line_field_and_problem(config: Config, text: str, field: str, words: str):
    with pytest.raises(JobError) as caught:
        parse_line(text, config, line=42)
    err = caught.value
    assert err.line == 42
    assert err.field == field
    assert words in err.message
    assert str(err).startswith("line 42")


def test_there_are_at_least_twenty_bad_line_cases():
    assert len(BAD_LINES) >= 20


def test_oversized_line_is_refused_with_the_limit(config: Config):
    text = json.dumps({"prompt": "x" * (config.limits.max_line_bytes + 10)})
    with pytest.raises(JobError, match=r"line 3: \(line\): line is \d+ bytes; the limit is"):
        parse_line(text, config, line=3)


def test_file_reports_every_bad_line_and_duplicate_ids(config: Config):
    lines = [
        '{"custom_id": "a", "prompt": "one"}',
        "",
        '{"custom_id": "b", "prompt": 7}',
        '{"custom_id": "a", "prompt": "again"}',
        '{"prompt": "no id"}',
    ]
    out = list(parse_lines(lines, config))
    assert [n for n, _ in out] == [1, 3, 4, 5]
    errors = {n: r for n, r in out if isinstance(r, JobError)}
    assert set(errors) == {3, 4}
    assert errors[3].field == "prompt" and errors[3].custom_id == "b"
    assert errors[4].field == "custom_id" and "duplicate custom_id 'a'" in errors[4].message
    assert out[3][1].custom_id == "line-5"


def test_short_form_defaults_and_role_routing(config: Config):
    job = parse_line('{"prompt": "is this spam?", "role": "classify"}', config, line=1)
    assert job.model == "deepseek-chat"
    assert job.messages[0] == Message(role="system", content="Answer with a single label.")
    assert job.messages[1].content == "is this spam?"
    assert (job.max_tokens, job.temperature) == (16, 0)
    code = parse_line('{"prompt": "fix", "role": "code", "temperature": 1}', config, line=2)
    assert code.model == "gpt-4.1" and code.temperature == 1  # the job's own value wins
    assert code.request_body(config.models["gpt-4.1"])["model"] == "gpt-4.1"
    plain = parse_line('{"prompt": "x"}', config, line=3)
    assert plain.model == config.defaults.model and plain.max_tokens is None


def test_provider_model_id_is_accepted_for_the_model(config: Config):
    job = parse_line('{"prompt": "x", "model": "claude-sonnet-4-5"}', config, line=1)
    assert job.model == "claude-sonnet-4.5"
    assert job.request_body(config.models[job.model])["model"] == "claude-sonnet-4-5"


def test_streaming_body_asks_for_usage(config: Config):
    job = parse_line('{"prompt": "x", "stream": true}', config, line=1)
    body = job.request_body(config.models[job.model])
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_job_line_round_trips_through_the_queue_body(config: Config):
    text = batch_line(
        body={"model": "gpt-4.1", "messages": MSG, "max_tokens": 50, "top_p": 0.9, "tools": []},
        priority="high",
        metadata={"team": "search"},
    )
    job = parse_line(text, config, line=9)
    again = parse_job(json.loads(job.to_line()), config)
    assert again == job
    assert again.priority is Priority.high and again.params == {"top_p": 0.9, "tools": []}
    role_job = parse_line('{"prompt": "x", "role": "classify", "cache": true}', config, line=4)
    assert parse_job(json.loads(role_job.to_line()), config) == role_job


def test_queue_body_without_custom_id_is_refused(config: Config):
    with pytest.raises(JobError, match="custom_id: required for a job sent straight to a queue"):
        parse_job({"prompt": "x"}, config)


def test_cache_key_ignores_streaming_but_not_content(config: Config):
    model = config.models["deepseek-chat"]
    a = parse_line('{"prompt": "x", "temperature": 0}', config, line=1)
    b = parse_line('{"prompt": "x", "temperature": 0, "stream": true}', config, line=2)
    c = parse_line('{"prompt": "y", "temperature": 0}', config, line=3)
    assert a.cache_key(model) == b.cache_key(model) != c.cache_key(model)
