"""``Simulator``: the simulator in-process, on a background thread with its own event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from chatbatch.local.simulator.server import SimulatorServer
from chatbatch.local.simulator.settings import Fault, FaultKind, SimulatorSettings
from chatbatch.local.simulator.stats import Stats

T = TypeVar("T")


class Simulator:
    """The simulator on a background thread with its own event loop.

    ``with Simulator(SimulatorSettings(rpm=60)) as sim: ... sim.base_url ...``; port 0
    takes a free port; ``clock`` is the engine's (a test's own clock moves the batches and
    the windows without waiting). The methods are safe to call from any thread.
    """

    def __init__(
        self,
        settings: SimulatorSettings | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.port = port
        self._server = SimulatorServer(settings or SimulatorSettings(), clock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL, ending in /v1."""
        return f"{self.url}/v1"

    def start(self) -> Simulator:
        self._thread = threading.Thread(target=self._run, name="chatbatch-simulator", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=10)
        if self._error is not None or self._loop is None:
            raise RuntimeError(f"simulator did not start: {self._error}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=10)
        self._loop = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> Stats:
        return self._call(self._server.engine.stats)

    def inject(self, *faults: Fault | FaultKind | str) -> None:
        """Faults for the next chat requests, in order (before any random ones)."""
        parsed = [f if isinstance(f, Fault) else Fault(kind=FaultKind(f)) for f in faults]
        self._call(lambda: self._server.engine.inject(parsed))

    def inject_batch(self, *faults: Fault | FaultKind | str) -> None:
        """Faults for the next batch lines answered, in order (``Engine.inject_batch``)."""
        parsed = [f if isinstance(f, Fault) else Fault(kind=FaultKind(f)) for f in faults]
        self._call(lambda: self._server.engine.inject_batch(parsed))

    def outage(self, seconds: float) -> None:
        """Every chat request gets a 503 for the next ``seconds``."""
        self._call(lambda: self._server.engine.start_outage(seconds))

    def configure(self, **changes: Any) -> SimulatorSettings:
        return self._call(lambda: self._server.engine.configure(changes))

    def reset(self) -> None:
        self._call(self._server.engine.reset)

    @property
    def settings(self) -> SimulatorSettings:
        return self._server.engine.settings

    def _call(self, fn: Callable[[], T]) -> T:
        if self._loop is None:
            raise RuntimeError("the simulator is not running")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as err:
                future.set_exception(err)

        self._loop.call_soon_threadsafe(run)
        return future.result(timeout=10)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as err:
            self._error = err
            self._ready.set()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self.port = await self._server.start(self.host, self.port)
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self._server.stop()
