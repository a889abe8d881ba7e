"""What the simulator counts and reports: ``Stats`` (``GET /stats``) and the counters behind
it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field

from chatbatch.local.simulator.windows import SECOND_S, Window


class ModelBill(BaseModel):
    """What one model billed: every generation, delivered whole or not."""

    calls: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = Field(
        default=0, description="prompt tokens written to the cache (Anthropic's /v1/messages)"
    )
    cache_write_1h_tokens: int = Field(
        default=0, description="of cache_write_tokens, those written to the 1-hour cache"
    )
    completion_tokens: int = Field(default=0, description="output tokens, reasoning included")

    def add(
        self, prompt: int, cached: int, completion: int, cache_write: int, cache_write_1h: int
    ) -> None:
        self.calls += 1
        self.prompt_tokens += prompt
        self.cached_tokens += cached
        self.cache_write_tokens += cache_write
        self.cache_write_1h_tokens += cache_write_1h
        self.completion_tokens += completion


class Stats(BaseModel):
    uptime_s: float
    connections: int = Field(description="TCP connections accepted")
    requests: int = Field(description="chat completion and Anthropic messages requests received")
    by_status: dict[str, int] = Field(description="status code, or 'reset' / 'hang'")
    faults: dict[str, int]
    completions: int = Field(
        description="completions delivered whole (every byte written, the client still there)"
    )
    distinct_requests: int = Field(description="distinct request bodies delivered whole")
    duplicates: int = Field(
        description="completions delivered whole beyond the first per distinct request"
    )
    billed_calls: int = Field(
        description="answers generated and billed, delivered whole or not (truncated, "
        "corrupt, reset after generation, slow past the client's patience, without usage)"
    )
    billed_unread: int = Field(
        description="billed but not delivered whole: billed_calls - completions"
    )
    billed_by_model: dict[str, ModelBill] = Field(description="by model id: what it billed")
    batch_billed_by_model: dict[str, ModelBill] = Field(
        default_factory=dict,
        description="by model id: the batch lines answered (succeeded) through the batch "
        "APIs, billed apart: the providers bill them at half price, so the caller prices "
        "these tokens with the batch prices. Not in billed_calls nor in the token totals",
    )
    prompt_tokens: int = Field(description="prompt tokens of every billed generation")
    cached_tokens: int = Field(description="cached prompt tokens of every billed generation")
    cache_write_tokens: int = Field(
        default=0, description="prompt tokens written to the cache by every billed generation"
    )
    cache_write_1h_tokens: int = Field(
        default=0, description="of cache_write_tokens, those written to the 1-hour cache"
    )
    completion_tokens: int = Field(
        description="output tokens of every billed generation, reasoning included"
    )
    max_requests_60s: int = Field(description="most chat requests received in any 60 s")
    max_requests_1s: int = Field(description="most chat requests received in any 1 s")
    max_tokens_60s: int = Field(description="most tokens billed in any 60 s")
    rate_limited: dict[str, int] = Field(
        description="429s for a rate limit, by the limit: requests_per_min, "
        "tokens_per_min, requests_per_second, tokens_per_second"
    )
    received_s: list[float] = Field(
        description="when each chat request was received, seconds after the start (ms)"
    )
    bodies: list[Any] = Field(
        default_factory=list,
        description="every chat request body received, in order (with ``keep_bodies``)",
    )


@dataclass
class Counters:
    """The running counts behind ``Stats``; the engine's ``reset`` replaces them whole."""

    connections: int = 0
    requests: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    completions: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    billed_by_model: dict[str, ModelBill] = field(default_factory=dict)
    batch_billed_by_model: dict[str, ModelBill] = field(default_factory=dict)
    max_requests_60s: int = 0
    max_requests_1s: int = 0
    max_tokens_60s: int = 0
    rate_limited: dict[str, int] = field(default_factory=dict)
    started: float = 0.0  # the clock's reading at the simulator's start
    received_s: list[float] = field(default_factory=list)
    bodies: list[Any] = field(default_factory=list)
    received: Window = field(default_factory=Window)
    received_1s: Window = field(default_factory=lambda: Window(SECOND_S))
    billed: Window = field(default_factory=Window)

    def count_request(self, now: float) -> None:
        self.requests += 1
        self.received_s.append(round(now - self.started, 3))
        self.received.add(now)
        self.received_1s.add(now)
        self.max_requests_60s = max(self.max_requests_60s, self.received.total)
        self.max_requests_1s = max(self.max_requests_1s, self.received_1s.total)

    def count_rate_limited(self, cause: str) -> None:
        self.rate_limited[cause] = self.rate_limited.get(cause, 0) + 1

    def count_status(self, status: int | str) -> None:
        self.by_status[str(status)] = self.by_status.get(str(status), 0) + 1

    def count_fault(self, kind: str) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + 1

    def bill(
        self,
        now: float,
        model: str,
        prompt: int,
        cached: int,
        completion: int,
        *,
        cache_write: int = 0,
        cache_write_1h: int = 0,
    ) -> None:
        """An answer generated: billed, whether or not it is ever delivered. ``prompt``
        holds every input token, ``cached`` (read) and ``cache_write`` (written; of them
        ``cache_write_1h`` to the 1-hour cache) included."""
        bill = self.billed_by_model.setdefault(model, ModelBill())
        bill.add(prompt, cached, completion, cache_write, cache_write_1h)
        self.billed.add(now, prompt + completion)
        self.max_tokens_60s = max(self.max_tokens_60s, self.billed.total)

    def bill_batch(
        self,
        model: str,
        prompt: int,
        cached: int,
        completion: int,
        *,
        cache_write: int = 0,
        cache_write_1h: int = 0,
    ) -> None:
        """A batch line answered: billed apart (at the batch price), outside the windows."""
        bill = self.batch_billed_by_model.setdefault(model, ModelBill())
        bill.add(prompt, cached, completion, cache_write, cache_write_1h)

    def deliver(self, key: str) -> None:
        """A completion delivered whole, of the request body ``key`` identifies."""
        seen = self.completions.get(key, 0)
        self.completions[key] = seen + 1
        self.duplicates += 1 if seen else 0

    def stats(self, uptime_s: float) -> Stats:
        bills = self.billed_by_model.values()
        billed_calls = sum(b.calls for b in bills)
        completions = sum(self.completions.values())
        return Stats(
            uptime_s=uptime_s,
            connections=self.connections,
            requests=self.requests,
            by_status=dict(self.by_status),
            faults=dict(self.faults),
            completions=completions,
            distinct_requests=len(self.completions),
            duplicates=self.duplicates,
            billed_calls=billed_calls,
            billed_unread=billed_calls - completions,
            billed_by_model={m: b.model_copy() for m, b in self.billed_by_model.items()},
            batch_billed_by_model={
                m: b.model_copy() for m, b in self.batch_billed_by_model.items()
            },
            prompt_tokens=sum(b.prompt_tokens for b in bills),
            cached_tokens=sum(b.cached_tokens for b in bills),
            cache_write_tokens=sum(b.cache_write_tokens for b in bills),
            cache_write_1h_tokens=sum(b.cache_write_1h_tokens for b in bills),
            completion_tokens=sum(b.completion_tokens for b in bills),
            max_requests_60s=self.max_requests_60s,
            max_requests_1s=self.max_requests_1s,
            max_tokens_60s=self.max_tokens_60s,
            rate_limited=dict(self.rate_limited),
            received_s=list(self.received_s),
            bodies=list(self.bodies),
        )
