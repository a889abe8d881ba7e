"""Job lines: every bad line is named by line number and field, good lines normalise."""

from __future__ import annotations

import json

import pytest
from prompt_corpus import big_tool

from chatbatch.client.submit import plan_file
from chatbatch.core.config import Config, Priority
from chatbatch.core.job_lines import parse_job, parse_line, parse_lines
from chatbatch.core.jobs import JobError
from chatbatch.core.messages import Message
from chatbatch.core.pricing import prompt_token_bound, worst_case_cost

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
    ('{"prompt": "x", "colour": "red"}', "colour", "unknown parameter"),
    ('{"prompt": "x", "custom_id": ""}', "custom_id", "must not be empty"),
    ('{"prompt": "x", "custom_id": "' + "x" * 513 + '"}', "custom_id", "at most 512 characters"),
    ('{"prompt": "x", "custom_id": 7}', "custom_id", "must be a string"),
    ('{"prompt": "x", "metadata": {"k": 1}}', "metadata.k", "must be a string"),
    ('{"prompt": "x", "batch_id": "a/b"}', "batch_id", "not allowed"),
    # chatbatch's own metadata is copied into every cost record: bounded like OpenAI's
    (batch_line(metadata={"k" * 65: "v"}), "metadata." + "k" * 65, "at most 64 characters"),
    (batch_line(metadata={"tenant": "v" * 513}), "metadata.tenant", "at most 512 characters"),
    (batch_line(metadata={f"k{i}": "v" for i in range(17)}), "metadata", "at most 16 items"),
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
    (
        batch_line(body={"messages": MSG, "max_completion_tokens": 9000}),
        "body.max_completion_tokens",
        "between 1 and 8192 for deepseek-chat (got 9000; models.deepseek-chat.max_output_tokens)",
    ),
    # a request parameter the worst case cannot bound is refused, naming it and why
    (batch_line(body={"messages": MSG, "audio": {"voice": "alloy"}}), "body.audio", "audio price"),
    (
        batch_line(body={"messages": MSG, "modalities": ["text", "audio"]}),
        "body.modalities",
        'only ["text"]',
    ),
    (
        batch_line(body={"messages": MSG, "web_search_options": {}}),
        "body.web_search_options",
        "billed per search",
    ),
    (
        batch_line(body={"messages": MSG, "prediction": {"type": "content", "content": "x"}}),
        "body.prediction",
        "rejected predicted tokens",
    ),
    (
        batch_line(body={"messages": MSG, "service_tier": "priority"}),
        "body.service_tier",
        "bills above the configured prices",
    ),
    (batch_line(body={"messages": MSG, "colour": "red"}), "body.colour", "unknown parameter"),
    (batch_line(body={"messages": MSG, "n": 0}), "body.n", "between 1 and 128"),
    (batch_line(body={"messages": MSG, "n": "5"}), "body.n", "between 1 and 128"),
    (batch_line(body={"messages": MSG, "n": True}), "body.n", "between 1 and 128"),
    (
        batch_line(body={"messages": MSG, "tools": [{"type": "web_search"}]}),
        "body.tools[0].type",
        "bills per use",
    ),
    (
        '{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": '
        '{"url": "https://x/a.png"}}]}]}',
        "messages[0].content",
        "models.deepseek-chat.image_input_tokens is not set",
    ),
    (
        '{"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}',
        "messages[0].content",
        "part 0 is of type 'input_audio': audio input is billed by its duration",
    ),
    (
        '{"model": "gpt-4.1", "messages": [{"role": "user", "content": '
        '[{"type": "image_url", "image_url": {}}]}]}',
        "messages[0].content[0].image_url.url",
        "required field is missing",
    ),
    (
        '{"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": '
        '{"url": "u"}}]}]}',
        "messages[0]",
        "a system message takes text parts",
    ),
    (
        '{"messages": [{"role": "tool", "content": "42"}]}',
        "messages[0]",
        "needs its tool_call_id",
    ),
    (
        '{"messages": [{"role": "assistant", "content": "x", "audio": {"id": "a1"}}]}',
        "messages[0]",
        "send its transcript as content",
    ),
    (
        '{"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}',
        "messages[0].content",
        "with a string text",
    ),
    ('{"messages": [{"role": "user", "content": null}]}', "messages[0]", "content is null"),
    (
        '{"messages": [{"role": "user", "content": "x", "tool_calls": '
        '[{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}',
        "messages[0]",
        "only an assistant turn has tool_calls",
    ),
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


def with_model(config: Config, name: str, **changes: object) -> Config:
    models = dict(config.models)
    models[name] = config.models["gpt-4.1"].model_copy(update=changes)
    return config.model_copy(update={"models": models})


def test_a_job_without_a_cap_is_sent_the_cap_it_reserves(config: Config):
    """The provider's own cap (gpt-4.1: 32,768) is never left to apply."""
    job = parse_line('{"prompt": "write a parser", "role": "code"}', config, line=1)
    model = config.models[job.model]
    assert job.max_tokens is None and model.reserve_max_tokens == 4096
    assert job.request_body(model)["max_tokens"] == 4096
    assert job.output_bound(model) == 4096
    assert job.worst_case_usd(model) == worst_case_cost(
        prompt_token_bound(job.request_body(model)), 4096, model
    )
    no_default = model.model_copy(update={"default_max_tokens": None})
    assert job.request_body(no_default)["max_tokens"] == model.max_output_tokens


@pytest.mark.parametrize(
    "cap", [{}, {"max_tokens": 300}, {"max_completion_tokens": 300}], ids=["none", "mt", "mct"]
)
def test_a_model_that_takes_max_completion_tokens_never_gets_max_tokens(config: Config, cap):
    """A reasoning model is sent max_completion_tokens; a job giving it max_tokens is
    refused at submit (OpenAI would answer 400), never rewritten."""
    config = with_model(config, "o4-mini", model_id="o4-mini", reasoning=True)
    line = batch_line(body={"model": "o4-mini", "messages": MSG} | cap)
    if "max_tokens" in cap:
        with pytest.raises(JobError, match=r"body\.max_tokens: o4-mini is a reasoning model"):
            parse_line(line, config, line=1)
        return
    job = parse_line(line, config, line=1)
    body = job.request_body(config.models["o4-mini"])
    assert "max_tokens" not in body
    assert body["max_completion_tokens"] == (300 if cap else 4096)
    # and a model that takes max_tokens keeps the job's max_completion_tokens as given
    plain = parse_line(
        batch_line(body={"messages": MSG, "max_completion_tokens": 7}), config, line=2
    )
    sent = plain.request_body(config.models[plain.model])
    assert sent["max_completion_tokens"] == 7 and "max_tokens" not in sent


def test_n_multiplies_the_output_and_bills_the_prompt_once(config: Config):
    model = config.models["deepseek-chat"]
    one = parse_line(batch_line(body={"messages": MSG, "max_tokens": 100}), config, line=1)
    five = parse_line(batch_line(body={"messages": MSG, "max_tokens": 100, "n": 5}), config, line=1)
    assert five.request_body(model)["n"] == 5 and five.output_bound(model) == 500
    extra = five.worst_case_usd(model) - one.worst_case_usd(model)
    assert extra == 400 * model.output_per_m / 1_000_000
    assert five.estimated_tokens(model) - one.estimated_tokens(model) == 400


def test_tools_schemas_names_and_tool_calls_are_in_the_worst_case(config: Config):
    model = config.models["gpt-4.1"]
    tool = big_tool(20_000)
    plain = parse_line(batch_line(body={"model": "gpt-4.1", "messages": MSG}), config, line=1)
    tooled = parse_line(
        batch_line(body={"model": "gpt-4.1", "messages": MSG, "tools": [tool], "n": 5}),
        config,
        line=1,
    )
    extra = tooled.worst_case_usd(model) - plain.worst_case_usd(model)
    assert extra >= (20_000 * model.input_per_m + 4 * 4096 * model.output_per_m) / 1_000_000
    history = [
        {"role": "user", "content": "q", "name": "n" * 300},
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "x" * 300}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "r" * 300}]},
    ]
    talk = parse_line(batch_line(body={"model": "gpt-4.1", "messages": history}), config, line=1)
    extra = talk.worst_case_usd(model) - plain.worst_case_usd(model)
    assert extra >= 900 * model.input_per_m / 1_000_000
    assert parse_job(json.loads(talk.to_line()), config) == talk


def test_known_harmless_parameters_pass_through_unchanged(config: Config):
    params = {
        "top_p": 0.5,
        "stop": ["x"],
        "seed": 1,
        "logit_bias": {"50256": -100},
        "logprobs": True,
        "top_logprobs": 2,
        "user": "u1",
        "modalities": ["text"],
        "service_tier": "flex",
        "parallel_tool_calls": False,
        "tool_choice": "auto",
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "response_format": {"type": "json_object"},
    }
    job = parse_line(batch_line(body={"messages": MSG} | params), config, line=1)
    body = job.request_body(config.models[job.model])
    assert {k: body[k] for k in params} == params


def test_submit_refuses_a_job_whose_worst_case_cannot_be_bounded(config: Config, tmp_path):
    path = tmp_path / "jobs.jsonl"
    lines = [
        batch_line(body={"messages": MSG, "web_search_options": {}}),
        batch_line(body={"messages": MSG, "n": 3}, custom_id="ok"),
    ]
    path.write_text("\n".join(lines) + "\n")
    plan = plan_file(path, config, "b1", Priority.normal)
    assert (plan.valid, plan.invalid) == (1, 1)
    assert str(plan.errors[0]).startswith("line 1, job 'r1': body.web_search_options: not accepted")
