"""Exact dollars for OpenAI- and DeepSeek-style usages, with and without cache hits."""

from __future__ import annotations

from decimal import Decimal

import pytest

from chatbatch.core.config import Config
from chatbatch.core.pricing import (
    Usage,
    cost,
    estimate_prompt_tokens,
    estimate_text_tokens,
    from_nanos,
    to_nanos,
    worst_case_cost,
)

CASES = [
    # (model, usage as the provider sends it, exact USD)
    (
        "deepseek-chat",  # DeepSeek style: 600 hits, 400 misses, 500 out
        {
            "prompt_tokens": 1000,
            "prompt_cache_hit_tokens": 600,
            "prompt_cache_miss_tokens": 400,
            "completion_tokens": 500,
            "total_tokens": 1500,
        },
        "0.0003388",
    ),
    (
        "deepseek-chat",  # DeepSeek style, no cache hit
        {
            "prompt_tokens": 1000,
            "prompt_cache_hit_tokens": 0,
            "prompt_cache_miss_tokens": 1000,
            "completion_tokens": 500,
        },
        "0.00049",
    ),
    (
        "deepseek-chat",  # only the miss count given
        {"prompt_tokens": 1000, "prompt_cache_miss_tokens": 400, "completion_tokens": 500},
        "0.0003388",
    ),
    (
        "gpt-4.1",  # OpenAI style: 1024 cached, 976 not, 300 out (100 reasoning)
        {
            "prompt_tokens": 2000,
            "prompt_tokens_details": {"cached_tokens": 1024},
            "completion_tokens": 300,
            "completion_tokens_details": {"reasoning_tokens": 100},
        },
        "0.004864",
    ),
    (
        "gpt-4.1",  # OpenAI style, no cache hit
        {
            "prompt_tokens": 2000,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens": 300,
        },
        "0.0064",
    ),
    ("claude-sonnet-4.5", {"prompt_tokens": 1_000_000, "completion_tokens": 1_000_000}, "18"),
    (
        "claude-sonnet-4.5",
        {
            "prompt_tokens": 10_000,
            "prompt_tokens_details": {"cached_tokens": 8_000},
            "completion_tokens": 1_000,
        },
        "0.0234",
    ),
    ("gemini-2.5-flash", {"prompt_tokens": 123, "completion_tokens": 45}, "0.0001494"),
    ("gemini-2.5-flash", None, "0"),
]


@pytest.mark.parametrize(("model", "usage", "usd"), CASES)
def test_cost_is_exact_to_the_token(config: Config, model: str, usage: dict | None, usd: str):
    assert cost(Usage.from_api(usage), config.models[model]) == Decimal(usd)


def test_usage_normalises_both_cache_reports():
    deepseek = Usage.from_api(
        {"prompt_tokens": 10, "prompt_cache_hit_tokens": 4, "completion_tokens": 2}
    )
    openai = Usage.from_api(
        {
            "prompt_tokens": 10,
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens": 2,
            "completion_tokens_details": {"reasoning_tokens": 1},
        }
    )
    assert (deepseek.cached_tokens, deepseek.uncached_prompt_tokens) == (4, 6)
    assert openai.cached_tokens == 4 and openai.reasoning_tokens == 1
    assert openai.total_tokens == 12  # reasoning is inside completion_tokens, not added again


def test_worst_case_prices_every_token_uncached(config: Config):
    model = config.models["deepseek-chat"]
    assert worst_case_cost(100, 4096, model) == Decimal("0.00174832")
    actual = cost(Usage(prompt_tokens=100, completion_tokens=4096, cached_tokens=50), model)
    assert actual < worst_case_cost(100, 4096, model)


def test_ledger_nanos_round_up_and_back():
    assert to_nanos(Decimal("0.0003388")) == 338_800
    assert to_nanos(Decimal("0.0000000001")) == 1  # never under-count
    assert from_nanos(338_800) == Decimal("0.0003388")


def test_offline_token_estimate():
    assert estimate_text_tokens("hello world") == 3
    assert estimate_text_tokens("你好世界") == 4  # non-ASCII: one token per character
    assert estimate_text_tokens("") == 0
    body = {"messages": [{"role": "user", "content": "hello world"}]}
    assert estimate_prompt_tokens(body) == 3 + 4 + 3


def reported(completion: int, total: int | None, reasoning: int | None) -> dict:
    """A usage block with 100 prompt tokens, as a gateway reports it."""
    usage: dict = {"prompt_tokens": 100, "completion_tokens": completion}
    if total is not None:
        usage["total_tokens"] = total
    if reasoning is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return usage


REASONING = [
    # (completion, total, reasoning tokens as reported; billed completion tokens; why)
    (300, 400, 200, 300, "inside (OpenAI, DeepSeek): total = prompt + completion, not twice"),
    (100, 400, 200, 300, "outside: total = prompt + completion + reasoning"),
    (100, 350, None, 250, "outside without details: what total holds beyond the parts"),
    (100, 450, 200, 350, "total says more than the reasoning detail: total wins"),
    (100, None, 200, 300, "total missing, reasoning > completion: it cannot be inside"),
    (300, None, 200, 300, "total missing, reasoning <= completion: the norm, inside"),
    (300, 250, 200, 300, "total smaller than the parts: ignored, never lowers them"),
    (50, 150, 200, 250, "total = parts but reasoning > completion: it cannot be inside"),
    (0, 100, None, 0, "nothing out"),
]


@pytest.mark.parametrize(
    ("completion", "total", "reasoning", "billed", "why"), REASONING, ids=[r[4] for r in REASONING]
)
def test_reasoning_tokens_are_priced_as_output_once(
    config: Config, completion: int, total: int | None, reasoning: int | None, billed: int, why: str
):
    parsed = Usage.from_api(reported(completion, total, reasoning))
    assert parsed.completion_tokens == billed, why
    assert parsed.reasoning_tokens == (reasoning or 0)
    assert parsed.total_tokens == 100 + billed  # what the limiter reconciles
    model = config.models["gemini-2.5-flash"]  # a thinking model
    assert cost(parsed, model) == cost(Usage(prompt_tokens=100, completion_tokens=billed), model)


def test_a_negative_or_unreadable_count_is_refused():
    with pytest.raises(ValueError, match="completion_tokens"):
        Usage.from_api({"prompt_tokens": 10, "completion_tokens": -5, "total_tokens": 10})
    with pytest.raises(ValueError):
        Usage.from_api({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": "many"})
