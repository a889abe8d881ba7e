"""Rate figures of a measured run: the busiest window, results per full minute, and the
gaps in the provider's traffic (seconds in which no request reached it)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from bench._common import RunResult


def max_in_window(times: list[float], span_s: float = 60.0) -> int:
    """The most events in any ``span_s`` window."""
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - span_s:
            start += 1
        best = max(best, end - start + 1)
    return best


def full_minutes(
    run: RunResult,
    amounts: dict[str, float] | None = None,
    *,
    first: int = 1,
    since: float | None = None,
) -> list[float]:
    """Results (or their ``amounts``) completed in each minute from the ``first`` on,
    counted from ``since`` (epoch seconds; default the submit), for every minute that
    ended before the last result (the backlog lasted the whole minute). By default the
    first minute is left out: a sliding window lets it run ahead."""
    start = run.submitted_at if since is None else since
    last = max(run.done_at.values(), default=start) - start
    minutes = []
    k = first
    while 60.0 * (k + 1) <= last:
        lo, hi = start + 60.0 * k, start + 60.0 * (k + 1)
        done = [c for c, t in run.done_at.items() if lo <= t < hi]
        minutes.append(sum(amounts[c] for c in done) if amounts else float(len(done)))
        k += 1
    return minutes


def mean_or_nan(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def gaps(times: Sequence[float], over_s: float = 0.0) -> list[tuple[float, float]]:
    """(start, length) of every gap longer than ``over_s`` between successive ``times``:
    between a run's first and last request, jobs were waiting through each of them."""
    ordered = sorted(times)
    return [(a, b - a) for a, b in pairwise(ordered) if b - a > over_s]


def longest_gap(times: Sequence[float]) -> float:
    return max((length for _, length in gaps(times)), default=0.0)
