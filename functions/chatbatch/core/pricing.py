"""Prices, usage and cost, exact to the token.

Money is a ``Decimal``: prices per 1M tokens have at most six decimals, so a usage's
cost is exact with no float rounding. The budget ledger stores integer nano-dollars
(``to_nanos``), rounding a cost up so the ledger never under-counts.

Token estimation (for the rate limiter, before any call) is offline: no tokenizer is
downloaded. ASCII text counts one token per 4 characters, every non-ASCII character one
token; each message adds 4 tokens of framing and each request 3, as in OpenAI's published
counting recipe. Measured against o200k, cl100k and DeepSeek's tokenizer
(``tests/unit/test_token_estimates.py``, ``bench/bench_tokens.py``): English prose and
code within 5% in aggregate (single texts 0.5-1.5x), JSON 0.81-0.85x, short prompts
1.25-1.3x, CJK 0.94-1.55x. The limiter reconciles every estimate with the real usage.

The budget reserves at a true upper bound instead (``prompt_token_bound``): every token
of a byte-level BPE covers at least one byte, so a prompt never has more tokens than
UTF-8 bytes (3-6x the real count on that corpus). That bound is what makes "the budget
is never exceeded" hold for certain, not just usually.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from decimal import ROUND_CEILING, Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from chatbatch.core.config import Model

MILLION = Decimal(1_000_000)
NANOS_PER_USD = Decimal(1_000_000_000)
MESSAGE_OVERHEAD_TOKENS = 4
REQUEST_OVERHEAD_TOKENS = 3


class Usage(BaseModel):
    """A provider's usage block, normalised: ``completion_tokens`` is every output token
    billed, reasoning included.

    OpenAI reports cache hits in ``prompt_tokens_details.cached_tokens``; DeepSeek in
    ``prompt_cache_hit_tokens`` / ``prompt_cache_miss_tokens``.

    Reasoning tokens (``completion_tokens_details.reasoning_tokens``) are inside the
    reported ``completion_tokens`` at OpenAI and DeepSeek, where ``total_tokens`` = prompt
    + completion. Some gateways report them outside, with ``total_tokens`` larger. The rule
    (``_outside``): output billed but left out of the reported ``completion_tokens`` is

    - ``total_tokens`` - prompt - completion when ``total_tokens`` is larger (whatever the
      details say: the provider billed those tokens, priced as output);
    - at least ``reasoning_tokens`` when they are more than the reported completion (they
      cannot be inside it), whether ``total_tokens`` is missing or not;
    - otherwise nothing: reasoning is inside, not counted twice. A ``total_tokens`` smaller
      than prompt + completion is ignored (the parts are billed, the sum never lowers them).

    That output is added to ``completion_tokens``, so the cost, the cost record, the batch
    counters and the limiter all carry the completion tokens billed.
    """

    model_config = ConfigDict(frozen=True)

    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    cached_tokens: int = Field(default=0, ge=0)
    reasoning_tokens: int = Field(default=0, ge=0)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def uncached_prompt_tokens(self) -> int:
        return self.prompt_tokens - self.cached_tokens

    @classmethod
    def from_api(cls, usage: dict[str, Any] | None) -> Usage:
        if not usage:
            return cls()
        prompt = int(usage.get("prompt_tokens") or 0)
        details = usage.get("prompt_tokens_details") or {}
        cached = details.get("cached_tokens")
        if cached is None:
            cached = usage.get("prompt_cache_hit_tokens")
            if cached is None and usage.get("prompt_cache_miss_tokens") is not None:
                cached = prompt - int(usage["prompt_cache_miss_tokens"])
        completion_details = usage.get("completion_tokens_details") or {}
        completion = int(usage.get("completion_tokens") or 0)
        if completion < 0:
            raise ValueError(f"completion_tokens is {completion}: a count is never negative")
        reasoning = int(completion_details.get("reasoning_tokens") or 0)
        total = usage.get("total_tokens")
        reported_total = None if total is None else int(total)
        return cls(
            prompt_tokens=prompt,
            completion_tokens=completion + _outside(prompt, completion, reasoning, reported_total),
            cached_tokens=min(prompt, max(0, int(cached or 0))),
            reasoning_tokens=reasoning,
        )


def _outside(prompt: int, completion: int, reasoning: int, total: int | None) -> int:
    """Output tokens billed but not in the reported ``completion_tokens`` (see ``Usage``)."""
    beyond = total - prompt - completion if total is not None else 0
    return max(0, beyond, reasoning if reasoning > completion else 0)


def cost(usage: Usage, model: Model) -> Decimal:
    """The exact USD cost of a usage at a model's prices."""
    return (
        usage.uncached_prompt_tokens * model.input_per_m
        + usage.cached_tokens * model.cached_input_per_m
        + usage.completion_tokens * model.output_per_m
    ) / MILLION


def worst_case_cost(prompt_tokens: int, max_tokens: int, model: Model) -> Decimal:
    """The most a request can cost: every prompt token uncached, every output token used."""
    return (prompt_tokens * model.input_per_m + max_tokens * model.output_per_m) / MILLION


def to_nanos(usd: Decimal) -> int:
    """USD -> integer nano-dollars for the ledger, rounded up."""
    return int((usd * NANOS_PER_USD).to_integral_value(rounding=ROUND_CEILING))


def from_nanos(nanos: int) -> Decimal:
    return Decimal(nanos) / NANOS_PER_USD


def estimate_text_tokens(text: str) -> int:
    ascii_chars = sum(1 for c in text if c < "\x80") if not text.isascii() else len(text)
    return math.ceil(ascii_chars / 4) + (len(text) - ascii_chars)


def prompt_token_bound(contents: Iterable[str]) -> int:
    """The most prompt tokens these contents can be: a byte-level BPE token is >= 1 byte."""
    return REQUEST_OVERHEAD_TOKENS + sum(
        MESSAGE_OVERHEAD_TOKENS + len(c.encode()) for c in contents
    )


def estimate_prompt_tokens(contents: Iterable[str]) -> int:
    """Estimated prompt tokens of the message contents of one request."""
    return REQUEST_OVERHEAD_TOKENS + sum(
        MESSAGE_OVERHEAD_TOKENS + estimate_text_tokens(c) for c in contents
    )
