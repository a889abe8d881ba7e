"""How many requests per second the provider simulator serves (zero latency, loopback).

The simulator runs in its own process (``python -m chatbatch.local.simulator --port 0``)
so the load generator, an httpx async client with N concurrent connections, does not
share its interpreter. Prints one line per mode (plain JSON, then streamed), with the
simulator's own CPU time per request where /proc tells it (the load generator, on the
same two cores, is usually the limit)::

    python bench/bench_simulator.py [--requests 5000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench._sim_process import start_simulator

WARMUP = 200


def _body(i: int, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "deepseek-chat",
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": f"Question number {i}: what is {i} plus {i}?"},
        ],
        "max_tokens": 64,
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


async def _client(url: str, indexes: Iterator[int], stream: bool) -> int:
    """One client on one keep-alive connection, sending until ``indexes`` runs out."""
    failures = 0
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        for i in indexes:
            response = await client.post("/chat/completions", json=_body(i, stream))
            await response.aread()
            failures += response.status_code != 200
    return failures


async def _load(url: str, count: int, concurrency: int, stream: bool, offset: int) -> int:
    """Send ``count`` requests from ``concurrency`` clients; return the failures.

    Each client has its own connection: one shared httpx pool of N connections costs
    O(N) per request on the client side and would measure httpx, not the simulator.
    """
    indexes = iter(range(offset, offset + count))
    results = await asyncio.gather(*(_client(url, indexes, stream) for _ in range(concurrency)))
    return sum(results)


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process (Linux), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_note(before: float | None, after: float | None, requests: int) -> str:
    if before is None or after is None or after <= before:
        return ""
    per_request = (after - before) / requests
    capacity = 1 / per_request
    return f"; simulator CPU {per_request * 1e3:.2f} ms/request (~{capacity:,.0f} req/s per core)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    process, url = start_simulator()
    try:
        offset = 0
        for stream in (False, True):
            asyncio.run(_load(url, WARMUP, args.concurrency, stream, offset))
            offset += WARMUP
            cpu_before, start = _cpu_s(process.pid), time.perf_counter()
            failures = asyncio.run(_load(url, args.requests, args.concurrency, stream, offset))
            elapsed = time.perf_counter() - start
            cpu_after = _cpu_s(process.pid)
            offset += args.requests
            mode = "streamed" if stream else "plain"
            print(
                f"simulator {mode:8}: {args.requests} requests, {args.concurrency} concurrent "
                f"clients, {elapsed:.2f} s, {args.requests / elapsed:,.0f} req/s, "
                f"{failures} failed" + _cpu_note(cpu_before, cpu_after, args.requests)
            )
        stats = json.loads(httpx.get(url.removesuffix("/v1") + "/stats").text)
        print(
            f"simulator stats: {stats['requests']} requests, {stats['completions']} completions, "
            f"{stats['duplicates']} duplicates, max {stats['max_requests_60s']} in 60 s"
        )
    finally:
        process.terminate()
        process.wait(timeout=10)


if __name__ == "__main__":
    main()
