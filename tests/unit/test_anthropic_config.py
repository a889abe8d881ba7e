"""Anthropic provider kind in the config: kind, version header, the cache-write price, and
how cache tokens are priced and bounded."""

from __future__ import annotations

import copy
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from chatbatch.core.config import Config, ConfigError, parse_config
from chatbatch.core.job_lines import parse_job
from chatbatch.core.jobs import Job
from chatbatch.core.messages import Message
from chatbatch.core.pricing import Usage, cost

ROOT = Path(__file__).resolve().parents[2]
RAW = tomllib.loads((ROOT / "chatbatch.toml").read_text())


def anthropic_config(**model: Any) -> dict[str, Any]:
    """The shipped config plus a kind anthropic provider and a model on it."""
    data = copy.deepcopy(RAW)
    data["providers"]["claude"] = {
        "base_url": "https://api.anthropic.com/v1",
        "kind": "anthropic",
        "api_key_env": "ANTHROPIC_API_KEY",
    }
    data["models"]["haiku"] = {
        "provider": "claude",
        "model_id": "claude-haiku-4-5",
        "input_per_m": 1.00,
        "cached_input_per_m": 0.10,
        "cache_write_per_m": 1.25,
        "cache_write_1h_per_m": 2.00,
        "output_per_m": 5.00,
        "prices_as_of": "2025-10-15",
        "rpm": 50,
        "tpm": 50_000,
        "max_output_tokens": 64000,
        "default_max_tokens": 1024,
    } | model
    return data


def test_provider_kind_defaults_to_openai_and_anthropic_has_its_messages_url() -> None:
    config = parse_config(anthropic_config())
    assert config.providers["openai"].kind == "openai"
    claude = config.providers["claude"]
    assert claude.kind == "anthropic"
    assert claude.anthropic_version == "2023-06-01"
    assert claude.url == "https://api.anthropic.com/v1/messages"
    assert config.providers["openai"].url == "https://api.openai.com/v1/chat/completions"
    assert config.models["haiku"].cache_write_price == Decimal("1.25")


def test_unknown_kind_is_refused_naming_the_key() -> None:
    data = anthropic_config()
    data["providers"]["claude"]["kind"] = "gemini"
    with pytest.raises(ConfigError, match=r"providers\.claude\.kind"):
        parse_config(data)


def test_anthropic_model_without_a_cache_write_price_is_refused_with_the_suggestion() -> None:
    data = anthropic_config()
    del data["models"]["haiku"]["cache_write_per_m"]
    with pytest.raises(ConfigError, match=r"models\.haiku\.cache_write_per_m: required.*1\.25"):
        parse_config(data)


def test_cache_write_price_at_an_openai_provider_is_refused() -> None:
    data = anthropic_config()
    data["models"]["gpt-4.1"]["cache_write_per_m"] = 2.5
    with pytest.raises(ConfigError, match=r"models\.gpt-4\.1\.cache_write_per_m: .*kind openai"):
        parse_config(data)


def test_the_shipped_example_of_an_anthropic_provider_parses() -> None:
    """chatbatch.toml carries a commented kind anthropic provider and models: uncommented,
    they are valid."""
    text = (ROOT / "chatbatch.toml").read_text()
    block = text.split("# --- Anthropic's own API", 1)[1].split("# ---", 1)[0]
    block = block[block.index("# [providers.") :]
    uncommented = "\n".join(
        line.removeprefix("# ") for line in block.splitlines() if line.startswith("# ")
    )
    extra = tomllib.loads(uncommented)
    data = copy.deepcopy(RAW)
    data["providers"] |= extra["providers"]
    data["models"] |= extra["models"]
    config = parse_config(data)
    kinds = {config.provider_of(name).kind for name in extra["models"]}
    assert kinds == {"anthropic"}
    for name in extra["models"]:
        model = config.models[name]
        assert model.cache_write_per_m == model.input_per_m * Decimal("1.25")
        assert model.cache_write_1h_per_m == model.input_per_m * 2


def test_anthropic_usage_prices_each_input_kind_at_its_own_rate() -> None:
    config: Config = parse_config(anthropic_config())
    usage = Usage.from_anthropic(
        {
            "input_tokens": 1000,
            "cache_creation_input_tokens": 2000,
            "cache_read_input_tokens": 4000,
            "output_tokens": 500,
        }
    )
    assert usage.prompt_tokens == 7000
    assert usage.cached_tokens == 4000
    assert usage.cache_write_tokens == 2000
    # 1000 x 1.00 + 2000 x 1.25 + 4000 x 0.10 + 500 x 5.00, per million
    assert cost(usage, config.models["haiku"]) == Decimal("0.0064")


def test_worst_case_prices_the_prompt_bound_at_the_cache_write_price() -> None:
    config: Config = parse_config(anthropic_config())
    model = config.models["haiku"]
    job = Job(
        custom_id="a",
        model="haiku",
        messages=[Message(role="user", content="hello " * 100)],
        max_tokens=10,
    )
    worst = job.worst_case_usage(model)
    assert worst.cache_write_tokens == worst.prompt_tokens > 0
    everything_written = (worst.prompt_tokens * Decimal("1.25") + 10 * Decimal(5)) / 10**6
    assert job.worst_case_usd(model) == everything_written


def test_a_translated_completions_usage_is_read_with_its_cache_writes() -> None:
    """The result's chat.completion keeps Anthropic's counts (usage.anthropic): the cost
    record read back from it has the cache writes, not just OpenAI's cached_tokens."""
    counts = {
        "input_tokens": 10,
        "cache_creation_input_tokens": 20,
        "cache_read_input_tokens": 30,
        "output_tokens": 5,
    }
    translated = {"prompt_tokens": 60, "completion_tokens": 5, "anthropic": counts}
    assert Usage.from_api(translated) == Usage.from_anthropic(counts)
    assert Usage.from_api(counts).cache_write_tokens == 20


def test_anthropic_model_without_a_one_hour_cache_write_price_is_refused() -> None:
    data = anthropic_config()
    del data["models"]["haiku"]["cache_write_1h_per_m"]
    with pytest.raises(ConfigError, match=r"models\.haiku\.cache_write_1h_per_m: required.*2"):
        parse_config(data)


def test_one_hour_cache_write_price_at_an_openai_provider_is_refused() -> None:
    data = anthropic_config()
    data["models"]["gpt-4.1"]["cache_write_1h_per_m"] = 4
    with pytest.raises(ConfigError, match=r"gpt-4\.1\.cache_write_1h_per_m: .*kind openai"):
        parse_config(data)


def test_worst_case_of_a_native_line_marking_no_one_hour_block_is_the_five_minute_write() -> None:
    """Only a request marking a block ttl "1h" can be billed 1-hour writes."""
    config: Config = parse_config(anthropic_config())
    model = config.models["haiku"]
    params = {"model": "haiku", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}
    job = parse_job({"custom_id": "a", "params": params}, config)
    worst = job.worst_case_usage(model)
    assert worst.cache_write_tokens == worst.prompt_tokens and worst.cache_write_1h_tokens == 0


def test_one_hour_cache_writes_are_booked_at_anthropics_price() -> None:
    """A native line may mark a block cache_control {"ttl": "1h"} (accepted at submit);
    Anthropic bills 1-hour cache writes at 2x the base input price (5-minute ones 1.25x)
    and reports them in usage.cache_creation.ephemeral_1h_input_tokens. The ledger must
    book what Anthropic bills."""
    line = {
        "custom_id": "c1",
        "params": {
            "model": "haiku",
            "max_tokens": 16,
            "system": [{"type": "text", "text": "long policy " * 50,
                        "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
            "messages": [{"role": "user", "content": "hi"}],
        },
    }  # fmt: skip
    config: Config = parse_config(anthropic_config())
    parse_job(line, config)  # accepted
    model = config.models["haiku"]  # input 1.00 / M
    usage = {
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_creation_input_tokens": 1_000_000,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 1_000_000},
    }
    billed_by_anthropic = Decimal("2.00")  # 1M tokens written to the 1-hour cache at 2x 1.00
    assert cost(Usage.from_anthropic(usage), model) == billed_by_anthropic
