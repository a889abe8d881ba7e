"""chatbatch.toml: the shipped file is valid; every bad value names key, value and rule."""

from __future__ import annotations

import copy
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from chatbatch.core.config import Config, ConfigError, Priority, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]
RAW = tomllib.loads((ROOT / "chatbatch.toml").read_text())


def test_shipped_config_has_the_four_comparison_models_at_list_prices(config: Config):
    prices = {
        name: (m.input_per_m, m.cached_input_per_m, m.output_per_m)
        for name, m in config.models.items()
    }
    assert prices == {
        "deepseek-chat": (Decimal("0.28"), Decimal("0.028"), Decimal("0.42")),
        "gpt-4.1": (Decimal("2.00"), Decimal("0.50"), Decimal("8.00")),
        "claude-sonnet-4.5": (Decimal("3.00"), Decimal("0.30"), Decimal("15.00")),
        "gemini-2.5-flash": (Decimal("0.30"), Decimal("0.03"), Decimal("2.50")),
    }
    assert set(config.priorities) == set(Priority)
    assert config.provider_of("gpt-4.1").chat_url == "https://api.openai.com/v1/chat/completions"


def with_change(path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(RAW)
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


DELETE = object()

BAD_VALUES = [
    # (dotted key, bad value, words the error must contain)
    ("providers.deepseek.base_url", "not a url", "providers.deepseek.base_url"),
    ("providers.deepseek.api_key_env", "MY-KEY", "providers.deepseek.api_key_env"),
    ("providers.deepseek.secret_arn", "my-secret", "providers.deepseek.secret_arn"),
    ("providers.deepseek.max_connections", 0, "greater than or equal to 1"),
    ("providers.deepseek.timeouts", {"connect_s": -1}, "providers.deepseek.timeouts.connect_s"),
    ("providers.deepseek.timeouts", {"connect_s": 30, "total_s": 10}, "total_s (10.0)"),
    ("models.deepseek-chat.provider", "mistral", "'mistral' is not a provider"),
    ("models.deepseek-chat.input_per_m", -0.28, "models.deepseek-chat.input_per_m"),
    ("models.deepseek-chat.cached_input_per_m", 1.0, "cannot exceed input_per_m"),
    ("models.deepseek-chat.output_per_m", "cheap", "models.deepseek-chat.output_per_m"),
    ("models.deepseek-chat.prices_as_of", "last tuesday", "models.deepseek-chat.prices_as_of"),
    ("models.deepseek-chat.rpm", 0, "models.deepseek-chat.rpm"),
    ("models.deepseek-chat.tpm", -1, "models.deepseek-chat.tpm"),
    ("models.deepseek-chat.max_output_tokens", 0, "models.deepseek-chat.max_output_tokens"),
    ("models.deepseek-chat.default_max_tokens", 9000, "cannot exceed max_output_tokens"),
    ("models.deepseek-chat.output_cap_param", "max_output", "'max_completion_tokens'"),
    ("models.deepseek-chat.model_id", DELETE, "models.deepseek-chat.model_id: Field required"),
    ("models.deepseek-chat.colour", "blue", "models.deepseek-chat.colour: Extra inputs"),
    ("budget.daily_usd", -5, "budget.daily_usd"),
    ("budget.reservation_ttl_s", 5, "budget.reservation_ttl_s"),
    ("priorities.urgent", {"max_concurrency": 2, "share": 0.1}, "priorities.urgent"),
    ("priorities.low", DELETE, "missing ['low']"),
    ("priorities.low.share", 0.5, "the shares add up to 1.4"),
    ("priorities.high.max_concurrency", 1, "priorities.high.max_concurrency"),
    ("roles.code.model", "gpt-5", "roles.code.model: 'gpt-5' is not a model"),
    ("roles.code.params", {"temprature": 0}, "unknown parameter(s) ['temprature']"),
    ("defaults.model", "gpt-2", "defaults.model: 'gpt-2' is not a model"),
    ("defaults.priority", "urgent", "defaults.priority"),
    ("retries.max_attempts", 0, "retries.max_attempts"),
    ("retries.base_s", 100, "base_s (100.0) cannot exceed max_backoff_s"),
    ("worker.architecture", "mips", "worker.architecture"),
    ("worker.timeout_s", 901, "worker.timeout_s"),
    ("worker.batch_size", 101, "worker.batch_size"),
    ("stack_name", "9lives", "stack_name"),
    ("providers.openai.base_url", "http://10.0.0.5/v1", "providers.openai.base_url: plain http"),
    ("providers.openai.base_url", "http://localhost.evil.com/v1", "only to this machine"),
    ("models.deepseek-chat.batch_input_per_m", 0.14, "is set but batch_api is not"),
    ("models.deepseek-chat.batch_api", "openai", "batch_input_per_m: required with batch_api"),
    ("priorities.low.deadline_h", -1, "priorities.low.deadline_h"),
]


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080/v1", "http://127.9.9.9/v1", "http://[::1]:9/v1", "http://localhost/v1"],
)
def test_plain_http_to_loopback_is_accepted(url: str):
    assert str(
        parse_config(with_change("providers.openai.base_url", url)).providers["openai"].base_url
    ).startswith(url.rstrip("/v1"))


@pytest.mark.parametrize(("key", "value", "words"), BAD_VALUES)
def test_bad_config_value_names_key_value_and_rule(key: str, value: Any, words: str):
    with pytest.raises(ConfigError) as caught:
        parse_config(with_change(key, value), "chatbatch.toml")
    message = str(caught.value)
    assert message.startswith("chatbatch.toml: ")
    assert words in message
    if value is not DELETE and not isinstance(value, dict) and "not a" not in words:
        assert repr(value) in message or str(value) in message


def test_batches_above_ten_need_a_batching_window():
    raw = with_change("worker.batch_size", 40)
    raw["worker"]["batch_window_s"] = 0
    with pytest.raises(ConfigError, match="batch_size 40 needs batch_window_s >= 1"):
        parse_config(raw, "chatbatch.toml")
    raw["worker"]["batch_window_s"] = 1
    assert parse_config(raw, "chatbatch.toml").worker.batch_size == 40


def test_there_are_at_least_twenty_bad_config_cases():
    assert len(BAD_VALUES) >= 20


def test_missing_and_malformed_files_say_what_to_do(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHATBATCH_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="config file not found; pass --config PATH"):
        load_config()
    bad = tmp_path / "chatbatch.toml"
    bad.write_text("stack_name = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config()
    monkeypatch.setenv("CHATBATCH_CONFIG", str(ROOT / "chatbatch.toml"))
    assert load_config().stack_name == "chatbatch"


def without_key_envs(*providers: str) -> dict[str, Any]:
    """The shipped config with ``api_key_env`` removed from ``providers``."""
    data = copy.deepcopy(RAW)
    for name in providers:
        del data["providers"][name]["api_key_env"]
    return data


def test_a_provider_naming_no_key_env_reads_its_own_upper_cased_name():
    data = without_key_envs("deepseek", "openai")
    data["providers"]["my-gateway.v2"] = {"base_url": "https://gw.example.com/v1"}
    config = parse_config(data)
    assert config.providers["deepseek"].api_key_env is None
    envs = {name: config.key_env(name) for name in config.providers}
    assert envs == {
        "deepseek": "DEEPSEEK_API_KEY",
        "openai": "OPENAI_API_KEY",
        "anthropic": "ANTHROPIC_API_KEY",
        "gemini": "GEMINI_API_KEY",
        "my-gateway.v2": "MY_GATEWAY_V2_API_KEY",
    }


@pytest.mark.parametrize(
    ("change", "first", "second", "env"),
    [
        # both name it
        ({"deepseek": "SHARED_KEY", "openai": "SHARED_KEY"}, "deepseek", "openai", "SHARED_KEY"),
        # one names the other's default
        ({"openai": "DEEPSEEK_API_KEY"}, "deepseek", "openai", "DEEPSEEK_API_KEY"),
        # the variable the bare --provider-url uses, named in the file
        (
            {"anthropic": "CHATBATCH_API_KEY", "gemini": "CHATBATCH_API_KEY"},
            "anthropic",
            "gemini",
            "CHATBATCH_API_KEY",
        ),
    ],
)
def test_two_providers_reading_one_key_variable_are_refused(
    change: dict[str, str], first: str, second: str, env: str
):
    data = without_key_envs("deepseek")
    for name, value in change.items():
        data["providers"][name]["api_key_env"] = value
    with pytest.raises(ConfigError) as err:
        parse_config(data, "chatbatch.toml")
    message = str(err.value)
    assert f"providers {first!r} and {second!r} both read their API key from {env}" in message
    assert "give each provider its own api_key_env" in message


def test_providers_at_one_url_may_share_a_key_variable():
    """One endpoint, one key (a gateway serving several providers' models): the key goes
    nowhere else, so the variable may be shared."""
    data = copy.deepcopy(RAW)
    for name in ("deepseek", "openai"):
        data["providers"][name]["base_url"] = "https://gateway.example.com/v1"
        data["providers"][name]["api_key_env"] = "GATEWAY_KEY"
    config = parse_config(data)
    assert config.key_env("deepseek") == config.key_env("openai") == "GATEWAY_KEY"


def test_a_default_key_env_that_is_no_variable_name_says_to_set_it():
    data = copy.deepcopy(RAW)
    data["providers"]["1gw"] = {"base_url": "https://gw.example.com/v1"}
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert "providers.1gw.api_key_env: unset, and the default '1GW_API_KEY'" in str(err.value)
