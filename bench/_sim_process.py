"""The project's simulator in a process of its own, as a real provider is: its clock and
its counts are not slowed by the pipeline under test (one Python process, one GIL)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import httpx

from chatbatch.local.simulator import SimulatorSettings
from chatbatch.local.simulator.stats import Stats


def start_simulator(args: Sequence[str] = ()) -> tuple[subprocess.Popen[str], str]:
    """``python -m chatbatch.local.simulator`` with ``args`` on a free port: the process
    and its /v1 URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "chatbatch.local.simulator", "--port", "0", *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening on " not in line:
        process.kill()
        raise RuntimeError(f"simulator did not start: {line!r}")
    return process, line.rsplit(" ", 1)[-1].strip()


def cli_args(settings: SimulatorSettings) -> list[str]:
    """The command line that starts a simulator with these limits, latency and faults."""
    args = ["--latency-ms", str(settings.latency_ms), "--seed", str(settings.seed)]
    if settings.rpm:
        args += ["--rpm", str(settings.rpm)]
    if settings.tpm:
        args += ["--tpm", str(settings.tpm)]
    if settings.per_second:
        args.append("--per-second")
    for kind, rate in settings.fault_rates.items():
        args += ["--fault", f"{kind.value}={rate}"]
    return args


@contextmanager
def simulator_process(args: Sequence[str] = ()) -> Iterator[str]:
    """A simulator process for the block; yields its /v1 URL."""
    process, url = start_simulator(args)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def stats_of(url: str) -> Stats:
    """What a simulator process counted (``GET /stats``), from its /v1 URL."""
    reply = httpx.get(url.removesuffix("/v1") + "/stats", timeout=30)
    reply.raise_for_status()
    return Stats.model_validate_json(reply.content)
