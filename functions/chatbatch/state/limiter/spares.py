"""Spaced send times that a worker instance was granted and will not use.

A grant books each request a send time after the shard's last one (``nx``). A job released
before its time leaves a hole in that spacing; the instance keeps the time here, and its
next grant on the shard takes such times before booking new ones, so a released send is
reused instead of lost. Only times still ahead are kept: a time that passed unused is gone
(sending it late would bunch two sends). Per instance, thread-safe.
"""

from __future__ import annotations

import threading
from collections import defaultdict


class Spares:
    def __init__(self) -> None:
        self._times: dict[tuple[str, int], list[float]] = defaultdict(list)
        self._lock = threading.Lock()

    def put(self, model: str, shard: int, starts: list[float], now: float) -> None:
        """Keep these send times for the next grant (those still ahead of ``now``)."""
        with self._lock:
            self._times[(model, shard)].extend(t for t in starts if t > now)

    def take(self, model: str, shard: int, now: float, most: int) -> list[float]:
        """Up to ``most`` kept send times still ahead, the earliest first; taken out."""
        with self._lock:
            ahead = sorted(t for t in self._times.pop((model, shard), []) if t > now)
            if ahead[most:]:
                self._times[(model, shard)] = ahead[most:]
            return ahead[:most]
