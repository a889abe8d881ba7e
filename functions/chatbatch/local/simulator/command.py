"""The command line: ``parse_args`` and ``serve`` (the simulator in the foreground), used by
``python -m chatbatch.local.simulator`` and ``chatbatch local simulator``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from chatbatch.local.simulator.server import SimulatorServer
from chatbatch.local.simulator.settings import FaultKind, SimulatorSettings


def serve(
    settings: SimulatorSettings | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Run the simulator in the foreground until interrupted.

    ``announce`` receives the base URL once listening (default: print it).
    """

    async def main() -> None:
        server = SimulatorServer(settings or SimulatorSettings())
        bound = await server.start(host, port)
        (announce or _print_url)(f"http://{host}:{bound}/v1")
        try:
            await asyncio.Event().wait()
        finally:
            await server.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


def _print_url(url: str) -> None:
    print(f"chatbatch simulator listening on {url}", flush=True)


def _fault_rate(text: str) -> tuple[FaultKind, float]:
    kind, _, rate = text.partition("=")
    try:
        return FaultKind(kind), float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected KIND=PROBABILITY, KIND one of {[k.value for k in FaultKind]}"
        ) from None


def parse_args(argv: Sequence[str] | None = None) -> tuple[SimulatorSettings, str, int]:
    parser = argparse.ArgumentParser(
        prog="python -m chatbatch.local.simulator",
        description="An OpenAI-compatible chat API on loopback (the chatbatch simulator).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--api-key", help="require this key (default: no auth)")
    parser.add_argument("--model", action="append", default=[], help="accept this model id")
    parser.add_argument("--rpm", type=int, help="requests per minute per model")
    parser.add_argument("--tpm", type=int, help="tokens per minute per model")
    parser.add_argument(
        "--per-second",
        action="store_true",
        help="also enforce rpm/tpm over every rolling second, as their sixtieth",
    )
    parser.add_argument("--latency-ms", type=float, default=0)
    parser.add_argument("--per-token-ms", type=float, default=0)
    parser.add_argument("--answer-tokens", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--fault", type=_fault_rate, action="append", default=[], help="e.g. 503=0.05"
    )
    parser.add_argument("--hang-s", type=float, default=30)
    parser.add_argument("--outage-at-s", type=float, help="start an outage this long after start")
    parser.add_argument("--outage-s", type=float, default=0)
    args = parser.parse_args(argv)
    try:
        settings = SimulatorSettings(
            api_key=args.api_key,
            models=args.model,
            rpm=args.rpm,
            tpm=args.tpm,
            per_second=args.per_second,
            latency_ms=args.latency_ms,
            per_token_ms=args.per_token_ms,
            answer_tokens=args.answer_tokens,
            seed=args.seed,
            fault_rates=dict(args.fault),
            hang_s=args.hang_s,
            outage_at_s=args.outage_at_s,
            outage_s=args.outage_s,
        )
    except ValidationError as err:
        parser.error(str(err))
    return settings, args.host, args.port


def main(argv: Sequence[str] | None = None) -> None:
    settings, host, port = parse_args(argv)
    serve(settings, host, port)
