"""Routing jobs between the synchronous path and the providers' batch APIs (issue 17,
part 1): the config's batch keys and per-priority deadlines, a line's ``deadline_h``, the
route a job takes under each override, and ``submit --route`` (the dry run's split and
costs; a real submit sends batch-routed jobs to the batch route's queue, and to a
deployment without one sends nothing and says why)."""

from __future__ import annotations

import copy
import json
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from chatbatch.cli.app import app
from chatbatch.client.submit import plan_file
from chatbatch.core.config import Config, ConfigError, Priority, parse_config
from chatbatch.core.job_lines import parse_line
from chatbatch.core.jobs import JobError
from chatbatch.core.pricing import Usage, cost
from chatbatch.core.resources import Resources
from chatbatch.core.routing import BATCH_WINDOW_H, deadline_of, route
from chatbatch.local.aws import create_resources
from chatbatch.local.runtime import register_stack
from chatbatch.state.sender import NO_BATCH_ROUTE
from chatbatch.state.store import Store, manifest_key

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = (ROOT / "chatbatch.toml").read_text()
TEXT = SHIPPED  # the shipped config: `low` may wait 24 h, the rest as soon as possible
RAW = tomllib.loads(TEXT)
runner = CliRunner()


@pytest.fixture(scope="module")
def config_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("routing") / "chatbatch.toml"
    path.write_text(TEXT)
    return path


@pytest.fixture
def config() -> Config:
    return parse_config(RAW, "chatbatch.toml")


def changed(path: tuple[str, ...], value: Any, raw: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(raw)
    *parents, last = path
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    if value is None:
        node.pop(last, None)
    else:
        node[last] = value
    return data


# -- config ---------------------------------------------------------------------------


def test_shipped_batch_prices_are_half_the_synchronous_ones(config: Config) -> None:
    gpt = config.models["gpt-4.1"]
    assert gpt.batch_api == "openai"
    assert (gpt.batch_input_per_m, gpt.batch_cached_input_per_m, gpt.batch_output_per_m) == (
        gpt.input_per_m / 2,
        gpt.cached_input_per_m / 2,
        gpt.output_per_m / 2,
    )
    # DeepSeek has no batch API; Claude here goes through Anthropic's OpenAI-compatible
    # endpoint (kind openai), which has none either; Gemini's is not wired
    for name in ("deepseek-chat", "claude-sonnet-4.5", "gemini-2.5-flash"):
        assert config.models[name].batch_api is None
    assert config.priorities[Priority.low].deadline_h == 24
    assert all(config.priorities[p].deadline_h == 0 for p in Priority if p != Priority.low)


def test_the_commented_anthropic_models_carry_their_batch_prices() -> None:
    """The kind anthropic example, uncommented, is valid and prices batches at 50%."""
    text = (ROOT / "chatbatch.toml").read_text()
    start = text.index("# [providers.claude]")
    end = text.index("# --- Budget")
    block = "\n".join(line.removeprefix("# ") for line in text[start:end].splitlines())
    raw = RAW | tomllib.loads(block.replace("\n#\n", "\n\n"))
    raw["providers"] = RAW["providers"] | raw["providers"]
    raw["models"] = RAW["models"] | raw["models"]
    config = parse_config(raw)
    for name in ("claude-sonnet", "claude-haiku"):
        model = config.models[name]
        assert model.batch_api == "anthropic"
        batch = model.batch_priced()
        assert batch.input_per_m * 2 == model.input_per_m
        assert batch.cache_write_price * 2 == model.cache_write_price
        assert batch.cache_write_1h_price * 2 == model.cache_write_1h_price


GPT = ("models", "gpt-4.1")
DEEPSEEK = ("models", "deepseek-chat")
DEEPSEEK_BATCH = {
    "batch_input_per_m": 0.14,
    "batch_cached_input_per_m": 0.014,
    "batch_output_per_m": 0.21,
}
BAD_BATCH = [
    # (the model or priority, its changed keys (None: removed), words the error must contain)
    (
        GPT,
        {"batch_input_per_m": None},
        "models.gpt-4.1: batch_input_per_m: required with batch_api = 'openai'",
    ),
    (GPT, {"batch_output_per_m": 9.5}, "batch_output_per_m (9.5) cannot exceed output_per_m (8"),
    (GPT, {"batch_cached_input_per_m": 0.6}, "batch_cached_input_per_m (0.6) cannot exceed"),
    (
        DEEPSEEK,
        {"batch_input_per_m": 0.14},
        "models.deepseek-chat: batch_input_per_m (0.14) is set but batch_api is not",
    ),
    (
        DEEPSEEK,
        {"batch_api": "anthropic"} | DEEPSEEK_BATCH,
        "models.deepseek-chat.batch_api: 'anthropic' does not match provider 'deepseek', "
        "which is kind 'openai'",
    ),
    (GPT, {"batch_api": "google"}, "models.gpt-4.1.batch_api: Input should be 'openai' or"),
    (("priorities", "low"), {"deadline_h": -1}, "priorities.low.deadline_h: Input should be"),
    (("priorities", "low"), {"deadline_h": "a day"}, "priorities.low.deadline_h"),
]


@pytest.mark.parametrize(("where", "changes", "words"), BAD_BATCH)
def test_bad_batch_config_names_key_value_and_rule(
    where: tuple[str, ...], changes: dict[str, Any], words: str
) -> None:
    raw = RAW
    for key, value in changes.items():
        raw = changed((*where, key), value, raw)
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, "chatbatch.toml")
    assert str(caught.value).startswith("chatbatch.toml: ")
    assert words in str(caught.value)
    bad = [v for v in changes.values() if v is not None]
    assert any(str(v) in str(caught.value) for v in bad) or not bad


@given(
    prompt=st.integers(0, 10**7),
    cached=st.integers(0, 10**7),
    output=st.integers(0, 10**7),
)
def test_a_usage_at_batch_prices_costs_half(prompt: int, cached: int, output: int) -> None:
    config = parse_config(RAW)
    gpt = config.models["gpt-4.1"]
    usage = Usage(prompt_tokens=prompt + cached, cached_tokens=cached, completion_tokens=output)
    assert cost(usage, gpt.batch_priced()) * 2 == cost(usage, gpt)


def test_a_model_without_batch_api_has_no_batch_prices(config: Config) -> None:
    with pytest.raises(ValueError, match="has no batch_api"):
        config.models["deepseek-chat"].batch_priced()


# -- a line's deadline ----------------------------------------------------------------

BATCH_LINE = {
    "custom_id": "b",
    "method": "POST",
    "url": "/v1/chat/completions",
    "body": {"model": "gpt-4.1", "messages": [{"role": "user", "content": "x"}]},
}


@pytest.mark.parametrize(
    "line",
    [{"prompt": "x", "model": "gpt-4.1"}, BATCH_LINE],
    ids=["short", "openai-batch"],
)
def test_a_deadline_is_read_from_either_form_and_kept_on_the_wire(
    config: Config, line: dict[str, Any]
) -> None:
    job = parse_line(json.dumps(line | {"deadline_h": 36}), config, line=1)
    assert job.deadline_h == 36
    assert parse_line(job.to_line(), config).deadline_h == 36
    assert "deadline_h" not in job.request_body(config.models["gpt-4.1"])


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (0, "deadline_h: must be greater than 0"),
        (-3, "deadline_h: must be greater than 0"),
        ("24", "deadline_h: must be a number (got '24')"),
        (True, "deadline_h: must be a number (got True)"),
        ([24], "deadline_h: must be a number"),
    ],
)
def test_a_bad_deadline_is_a_clear_line_error(config: Config, value: Any, words: str) -> None:
    for line in ({"custom_id": "a", "prompt": "x"}, BATCH_LINE):
        with pytest.raises(JobError) as caught:
            parse_line(json.dumps(line | {"deadline_h": value}), config, line=7)
        assert str(caught.value).startswith("line 7, job ") and words in str(caught.value)


def test_a_huge_deadline_in_json_is_refused(config: Config) -> None:
    with pytest.raises(JobError, match="deadline_h: must be a finite number"):
        parse_line('{"prompt": "x", "deadline_h": 1e999}', config, line=1)


# -- the route ------------------------------------------------------------------------


def job_of(config: Config, **line: Any) -> Any:
    return parse_line(json.dumps({"custom_id": "j", "prompt": "x"} | line), config, line=1)


def test_auto_routes_by_deadline_model_and_streaming(config: Config) -> None:
    low = job_of(config, model="gpt-4.1", priority="low")
    assert route(low, config).kind == "batch"
    assert "24 h" in route(low, config).reason
    assert route(job_of(config, model="gpt-4.1"), config).kind == "sync"  # normal: ASAP
    # the line's own deadline wins over its priority's, either way
    assert route(job_of(config, model="gpt-4.1", deadline_h=48), config).kind == "batch"
    short = job_of(config, model="gpt-4.1", priority="low", deadline_h=2)
    assert route(short, config).kind == "sync" and "within 2 h" in route(short, config).reason
    # the submit's --priority counts for lines that name none
    plain = job_of(config, model="gpt-4.1")
    assert route(plain, config, default_priority=Priority.low).kind == "batch"
    assert deadline_of(plain, config, Priority.low) == BATCH_WINDOW_H
    # no batch API, or streaming: synchronous whatever the deadline
    assert route(job_of(config, model="deepseek-chat", priority="low"), config).kind == "sync"
    streamed = job_of(config, model="gpt-4.1", priority="low", stream=True)
    assert route(streamed, config).kind == "sync"
    assert "stream" in route(streamed, config).reason
    # n > 1 goes: OpenAI's batch endpoint takes it as the chat endpoint does
    assert route(job_of(config, model="gpt-4.1", priority="low", n=3), config).kind == "batch"


def test_overrides(config: Config) -> None:
    low = job_of(config, model="gpt-4.1", priority="low")
    asap = job_of(config, model="gpt-4.1")
    assert route(low, config, "sync").kind == "sync"
    assert route(asap, config, "batch").kind == "batch"
    for line, field in (
        ({"model": "deepseek-chat"}, "model"),
        ({"model": "gpt-4.1", "stream": True}, "stream"),
    ):
        with pytest.raises(JobError) as caught:
            route(job_of(config, **line), config, "batch")
        assert caught.value.custom_id == "j" and caught.value.field == field
        assert "--route batch" in str(caught.value)


# -- submit --route -------------------------------------------------------------------

JOBS = [
    {"custom_id": "a1", "model": "gpt-4.1", "prompt": "one", "priority": "low"},
    {"custom_id": "a2", "model": "gpt-4.1", "prompt": "two", "deadline_h": 48},
    {"custom_id": "a3", "model": "deepseek-chat", "prompt": "three", "priority": "low"},
    {"custom_id": "a4", "model": "gpt-4.1", "prompt": "four", "priority": "low", "stream": True},
    {"custom_id": "a5", "model": "gpt-4.1", "prompt": "five"},
]


@pytest.fixture
def jobs_file(tmp_path: Path) -> Path:
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(json.dumps(j) + "\n" for j in JOBS))
    return path


def test_the_plan_splits_by_route_at_each_routes_prices(config: Config, jobs_file: Path) -> None:
    plan = plan_file(jobs_file, config, "b", Priority.normal)
    sync, batch = plan.routes["sync"], plan.routes["batch"]
    assert (sync.jobs, batch.jobs) == (3, 2)
    assert batch.by_model == {"gpt-4.1": 2}
    assert sync.by_model == {"gpt-4.1": 2, "deepseek-chat": 1}
    assert batch.worst_case_usd * 2 == batch.at_sync_prices_usd > 0
    assert sync.worst_case_usd == sync.at_sync_prices_usd
    assert plan.worst_case_usd == sync.worst_case_usd + batch.worst_case_usd
    everything = plan_file(jobs_file, config, "b", Priority.normal, override="sync")
    assert everything.routes["batch"].jobs == 0
    assert everything.worst_case_usd == sync.at_sync_prices_usd + batch.at_sync_prices_usd
    forced = plan_file(jobs_file, config, "b", Priority.normal, override="batch")
    assert forced.valid == 3 and forced.invalid == 2
    assert [(e.line, e.custom_id, e.field) for e in forced.errors] == [
        (3, "a3", "model"),
        (4, "a4", "stream"),
    ]


def invoke(config_path: Path, *args: str) -> Any:
    return runner.invoke(app, [*args, "--config", str(config_path)])


def test_the_dry_run_shows_the_split_and_each_routes_cost(
    config_path: Path, jobs_file: Path
) -> None:
    result = invoke(config_path, "submit", str(jobs_file), "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["route"] == "auto" and report["status"] == "dry_run"
    batch = report["routes"]["batch"]
    assert batch["jobs"] == 2 and batch["by_model"] == {"gpt-4.1": 2}
    assert Decimal(batch["worst_case_usd"]) * 2 == Decimal(batch["at_sync_prices_usd"])
    text = invoke(config_path, "submit", str(jobs_file), "--dry-run")
    assert text.exit_code == 0
    assert "routes (--route auto)" in text.stdout and "the batch route saves up to" in text.stdout


def _deployed(config: Config, *, batch_route: bool = True) -> Resources:
    """The stack's resources in moto, registered as a stack the CLI finds (as `chatbatch
    local up` does); without ``batch_route``, a stack from before the route."""
    resources = create_resources(config)
    published = resources
    if not batch_route:
        published = resources.model_copy(update={"batch_queue": None, "batch_dlq": None})
    register_stack(published, config.stack_name)
    return resources


def _queued(url: str) -> list[dict[str, Any]]:
    """The job lines waiting on a queue (each received once, kept invisible)."""
    sqs = boto3.client("sqs")
    lines: list[dict[str, Any]] = []
    while reply := sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=60
    ).get("Messages"):
        lines += [json.loads(m["Body"]) for m in reply]
    return lines


def _custom_ids(url: str) -> set[str]:
    return {line["custom_id"] for line in _queued(url)}


def test_a_submit_sends_batch_routed_jobs_to_the_batch_queue(
    aws: None, config: Config, config_path: Path, jobs_file: Path
) -> None:
    resources = _deployed(config)
    assert resources.batch_queue is not None
    result = invoke(config_path, "submit", str(jobs_file), "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    report = json.loads(result.stdout)
    assert (report["status"], report["sent"]) == ("sent", 5)
    batched = _queued(resources.batch_queue)
    assert {line["custom_id"] for line in batched} == {"a1", "a2"}
    # the same body as on a priority queue: the line keeps its priority field
    assert {line["custom_id"]: line.get("priority") for line in batched}["a1"] == "low"
    assert _custom_ids(resources.queues[Priority.low]) == {"a3", "a4"}
    assert _custom_ids(resources.queues[Priority.normal]) == {"a5"}
    assert not _custom_ids(resources.queues[Priority.high])
    assert not _custom_ids(resources.queues[Priority.critical])


def test_route_batch_sends_every_job_it_can_take_and_lists_only_those(
    aws: None, config: Config, config_path: Path, jobs_file: Path
) -> None:
    resources = _deployed(config)
    assert resources.batch_queue is not None
    args = ("--route", "batch", "--skip-invalid", "--batch-id", "forced", "--json")
    result = invoke(config_path, "submit", str(jobs_file), *args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert json.loads(result.stdout)["sent"] == 3
    assert _custom_ids(resources.batch_queue) == {"a1", "a2", "a5"}
    assert not any(_custom_ids(url) for url in resources.queues.values())
    manifest = Store(boto3.client("s3"), resources.bucket).get_text(manifest_key("forced"))
    assert manifest is not None
    assert [json.loads(line) for line in manifest.splitlines()] == ["a1", "a2", "a5"]


def test_a_deployment_without_the_batch_route_is_refused_before_anything_is_sent(
    aws: None, config: Config, config_path: Path, jobs_file: Path
) -> None:
    resources = _deployed(config, batch_route=False)
    for args in ((), ("--route", "batch", "--skip-invalid")):
        result = invoke(config_path, "submit", str(jobs_file), *args)
        assert result.exit_code == 1
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: {NO_BATCH_ROUTE}; ")
        assert "nothing was sent" in last and "--route sync" in last
    refused = invoke(config_path, "submit", str(jobs_file), "--json")
    assert json.loads(refused.stdout)["status"] == "batch_not_deployed"
    assert resources.batch_queue is not None  # it exists; the stack does not name it
    assert not any(_custom_ids(url) for url in [*resources.queues.values(), resources.batch_queue])
    # nothing registered either: the same file goes synchronously when asked
    sync = invoke(config_path, "submit", str(jobs_file), "--route", "sync", "--json")
    assert sync.exit_code == 0, (sync.stdout, sync.stderr)
    assert json.loads(sync.stdout)["sent"] == 5
    assert not _custom_ids(resources.batch_queue)


def test_a_bad_route_is_a_usage_error(config_path: Path, jobs_file: Path) -> None:
    result = invoke(config_path, "submit", str(jobs_file), "--route", "later", "--dry-run")
    assert result.exit_code == 2 and "--route 'later': use sync, batch or auto" in result.stderr
