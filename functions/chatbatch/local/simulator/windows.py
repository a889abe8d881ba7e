"""Rolling 60 s windows (the busiest-minute stats), the per-model rate limits on them
(``Limits``: the real API's 429 and ``x-ratelimit-*`` headers; with ``per_second`` each
limit is also enforced over every rolling second, as its sixtieth), and the providers'
header forms of a wait."""

from __future__ import annotations

import datetime as dt
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from chatbatch.local.simulator.api import ApiError
from chatbatch.local.simulator.settings import SimulatorSettings

WINDOW_S = 60.0
SECOND_S = 1.0


class Window:
    """Amounts seen in the last ``span_s`` seconds, with their running total."""

    def __init__(self, span_s: float = WINDOW_S) -> None:
        self.span_s = span_s
        self.total = 0
        self._events: deque[tuple[float, int]] = deque()

    def prune(self, now: float) -> None:
        while self._events and self._events[0][0] <= now - self.span_s:
            self.total -= self._events.popleft()[1]

    def add(self, now: float, amount: int = 1) -> None:
        self.prune(now)
        self._events.append((now, amount))
        self.total += amount

    def wait_s(self, now: float, room: int) -> float:
        """Seconds until the total is at most ``room`` (0 if it already is)."""
        self.prune(now)
        excess = self.total - room
        if excess <= 0:
            return 0.0
        if room < 0:
            return self.span_s
        for when, amount in self._events:
            excess -= amount
            if excess <= 0:
                return when + self.span_s - now
        return self.span_s

    def reset_s(self, now: float) -> float:
        self.prune(now)
        return self._events[0][0] + self.span_s - now if self._events else 0.0


class RateLimited(ApiError):
    """The real API's 429 for a rate limit; ``cause`` names it (``requests_per_min``,
    ``tokens_per_second``, ...) for the stats."""

    def __init__(self, cause: str, message: str, wait_s: float, kind: str) -> None:
        super().__init__(
            429,
            message,
            type=kind,
            code="rate_limit_exceeded",
            headers=retry_after_headers(wait_s),
        )
        self.cause = cause


class _Check(NamedTuple):
    kind: str  # requests | tokens
    period: str  # min | second
    unit: str  # RPM, TPM, RPS, TPS
    limit: int
    window: Window
    amount: int

    def wait_s(self, now: float) -> float:
        # a request bigger than a second's share passes into an empty second
        room = self.limit - self.amount
        return self.window.wait_s(now, max(room, 0) if self.period == "second" else room)


def second_share(limit: int) -> int:
    """A per-minute limit enforced per second: 600/min as 10 per second (rounded up)."""
    return math.ceil(limit * SECOND_S / WINDOW_S)


@dataclass
class Limits:
    """One model's requests and tokens in the last minute, and in the last second."""

    requests: Window = field(default_factory=Window)
    tokens: Window = field(default_factory=Window)
    requests_1s: Window = field(default_factory=lambda: Window(SECOND_S))
    tokens_1s: Window = field(default_factory=lambda: Window(SECOND_S))

    def _checks(self, settings: SimulatorSettings, tokens: int) -> Iterator[_Check]:
        """The minute's limits first, then (``per_second``) each one's share of a second."""
        limits = [
            ("requests", "R", settings.rpm, 1, self.requests, self.requests_1s),
            ("tokens", "T", settings.tpm, tokens, self.tokens, self.tokens_1s),
        ]
        for kind, letter, limit, amount, minute, _ in limits:
            if limit:
                yield _Check(kind, "min", f"{letter}PM", limit, minute, amount)
        for kind, letter, limit, amount, _, second in limits:
            if limit and settings.per_second:
                yield _Check(kind, "second", f"{letter}PS", second_share(limit), second, amount)

    def check(self, model: str, now: float, settings: SimulatorSettings, tokens: int) -> None:
        """Raise the real API's 429 if one more request of ``tokens`` is over a limit."""
        for c in self._checks(settings, tokens):
            wait = c.wait_s(now)
            if wait > 0:
                raise RateLimited(
                    f"{c.kind}_per_{c.period}",
                    f"Rate limit reached for {model} on {c.kind} per {c.period} ({c.unit}): "
                    f"Limit {c.limit}, Used {c.window.total}, Requested {c.amount}. "
                    f"Please try again in {format_duration(wait)}.",
                    wait,
                    c.kind,
                )

    def record(self, now: float, tokens: int) -> None:
        """A request received; ``tokens`` of it generated (0: nothing was)."""
        self.requests.add(now, 1)
        self.requests_1s.add(now, 1)
        if tokens:
            self.tokens.add(now, tokens)
            self.tokens_1s.add(now, tokens)

    def _state(
        self, now: float, settings: SimulatorSettings
    ) -> Iterator[tuple[str, int, int, float]]:
        """(requests | tokens, limit, remaining, seconds to the window's next release)."""
        for kind, limit, window in (
            ("requests", settings.rpm, self.requests),
            ("tokens", settings.tpm, self.tokens),
        ):
            if limit:
                window.prune(now)
                yield kind, limit, max(0, limit - window.total), window.reset_s(now)

    def headers(self, now: float, settings: SimulatorSettings) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers every chat response carries."""
        headers = {}
        for kind, limit, remaining, reset_s in self._state(now, settings):
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(remaining)
            headers[f"x-ratelimit-reset-{kind}"] = format_duration(reset_s)
        return headers

    def anthropic_headers(self, now: float, settings: SimulatorSettings) -> dict[str, str]:
        """The ``anthropic-ratelimit-*`` headers every Messages response carries (the
        reset an RFC 3339 time)."""
        headers = {}
        wall = dt.datetime.now(dt.UTC)
        for kind, limit, remaining, reset_s in self._state(now, settings):
            reset = (wall + dt.timedelta(seconds=reset_s)).isoformat(timespec="milliseconds")
            headers[f"anthropic-ratelimit-{kind}-limit"] = str(limit)
            headers[f"anthropic-ratelimit-{kind}-remaining"] = str(remaining)
            headers[f"anthropic-ratelimit-{kind}-reset"] = reset.replace("+00:00", "Z")
        return headers


def format_duration(seconds: float) -> str:
    """Seconds -> the providers' header form: "250ms", "1.5s", "6m0s"."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


def retry_after_headers(wait_s: float) -> dict[str, str]:
    return {
        "retry-after": str(max(1, round(wait_s + 0.5))),
        "retry-after-ms": str(round(wait_s * 1000)),
    }
