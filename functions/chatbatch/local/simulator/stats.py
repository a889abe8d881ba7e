"""What the simulator counts and reports: ``Stats`` (``GET /stats``) and the counters behind
it."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, Field

from chatbatch.local.simulator.windows import Window


class Stats(BaseModel):
    uptime_s: float
    connections: int = Field(description="TCP connections accepted")
    requests: int = Field(description="chat completion requests received")
    by_status: dict[str, int] = Field(description="status code, or 'reset' / 'hang'")
    faults: dict[str, int]
    completions: int = Field(description="completions delivered whole (billed)")
    distinct_requests: int
    duplicates: int = Field(description="completions beyond the first per distinct request")
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int = Field(description="output tokens billed, reasoning included")
    max_requests_60s: int = Field(description="most chat requests received in any 60 s")
    max_tokens_60s: int = Field(description="most tokens billed in any 60 s")


@dataclass
class Counters:
    """The running counts behind ``Stats``; the engine's ``reset`` replaces them whole."""

    connections: int = 0
    requests: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    completions: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    max_requests_60s: int = 0
    max_tokens_60s: int = 0
    received: Window = field(default_factory=Window)
    billed: Window = field(default_factory=Window)

    def count_request(self, now: float) -> None:
        self.requests += 1
        self.received.add(now)
        self.max_requests_60s = max(self.max_requests_60s, self.received.total)

    def count_status(self, status: int | str) -> None:
        self.by_status[str(status)] = self.by_status.get(str(status), 0) + 1

    def count_fault(self, kind: str) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + 1

    def bill(self, now: float, key: str, prompt: int, cached: int, completion: int) -> None:
        """A completion delivered whole, of the request body ``key`` identifies."""
        seen = self.completions.get(key, 0)
        self.completions[key] = seen + 1
        self.duplicates += 1 if seen else 0
        self.prompt_tokens += prompt
        self.cached_tokens += cached
        self.completion_tokens += completion
        self.billed.add(now, prompt + completion)
        self.max_tokens_60s = max(self.max_tokens_60s, self.billed.total)

    def stats(self, uptime_s: float) -> Stats:
        return Stats(
            uptime_s=uptime_s,
            connections=self.connections,
            requests=self.requests,
            by_status=dict(self.by_status),
            faults=dict(self.faults),
            completions=sum(self.completions.values()),
            distinct_requests=len(self.completions),
            duplicates=self.duplicates,
            prompt_tokens=self.prompt_tokens,
            cached_tokens=self.cached_tokens,
            completion_tokens=self.completion_tokens,
            max_requests_60s=self.max_requests_60s,
            max_tokens_60s=self.max_tokens_60s,
        )
