"""HTTP/1.1 over asyncio streams: a small keep-alive parser and writer that carry the
engine's replies (``SimulatorServer``), on the caller's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import http
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from chatbatch.local.simulator.engine import Engine
from chatbatch.local.simulator.settings import SimulatorSettings

MAX_BODY_BYTES = 32 * 1024 * 1024
# a batch file upload or a message batch: the providers take up to 200 MB / 256 MB
MAX_UPLOAD_BYTES = 257 * 1024 * 1024
UPLOAD_ROUTES = ("/v1/files", "/files", "/v1/messages/batches", "/messages/batches")


class _BadRequestError(Exception):
    def __init__(self, status: int = 400) -> None:
        super().__init__(status)
        self.status = status


@dataclass(frozen=True)
class _Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    """The next request on the connection, None at a clean end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as err:
        if err.partial.strip():
            raise _BadRequestError from None
        return None
    except asyncio.LimitOverrunError:
        raise _BadRequestError(431) from None
    request_line, *lines = head[:-4].decode("latin-1").split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequestError
    headers = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep:
            raise _BadRequestError
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise _BadRequestError(411)
    try:
        length = int(headers.get("content-length") or 0)
    except ValueError:
        raise _BadRequestError from None
    most = MAX_UPLOAD_BYTES if parts[1].split("?")[0].rstrip("/") in UPLOAD_ROUTES else None
    if not 0 <= length <= (most or MAX_BODY_BYTES):
        raise _BadRequestError(413)
    body = await reader.readexactly(length) if length else b""
    connection = headers.get("connection", "").lower()
    keep = connection != "close" if parts[2] == "HTTP/1.1" else connection == "keep-alive"
    return _Request(parts[0], parts[1], headers, body, keep)


def _head(status: int, headers: dict[str, str], length: int | None, keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(
        f"content-length: {length}" if length is not None else "transfer-encoding: chunked"
    )
    if not keep_alive:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _left(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Whether the client has closed or reset the connection (it gave up waiting)."""
    return reader.at_eof() or reader.exception() is not None or writer.is_closing()


def _abort(writer: asyncio.StreamWriter, *, reset: bool) -> None:
    sock = writer.get_extra_info("socket")
    if reset and sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class SimulatorServer:
    """The engine behind an asyncio HTTP/1.1 server; runs on the caller's event loop."""

    def __init__(
        self, settings: SimulatorSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.engine = Engine(settings, clock)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await asyncio.start_server(self._serve, host, port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self.engine.count_connection()
        try:
            while await self._exchange(reader, writer):
                pass
        except _BadRequestError as err:
            with contextlib.suppress(ConnectionError):
                writer.write(_head(err.status, {}, 0, keep_alive=False))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # shutting down: end the connection quietly
        finally:
            self._connections.discard(task)
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        request = await _read_request(reader)
        if request is None:
            return False
        reply = self.engine.handle(request.method, request.target, request.headers, request.body)
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        # nobody to answer (a drop, or a client that gave up waiting): not delivered
        if reply.drop or (reply.delay_s and _left(reader, writer)):
            _abort(writer, reset=reply.reset)
            return False
        if reply.events is None:
            writer.write(_head(reply.status, reply.headers, len(reply.body), request.keep_alive))
            writer.write(reply.body)
        else:
            writer.write(_head(reply.status, reply.headers, None, request.keep_alive))
            if not await self._write_events(reader, writer, reply.events):
                _abort(writer, reset=False)
                return False
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        if reply.on_delivered is not None:
            reply.on_delivered()
        return request.keep_alive

    async def _write_events(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        events: list[tuple[float, bytes]],
    ) -> bool:
        """Write the frames; False if the client left between two of them."""
        split = self.engine.settings.write_bytes
        for delay, frame in events:
            if delay:
                await writer.drain()
                await asyncio.sleep(delay)
                if _left(reader, writer):
                    return False
            if split is None:
                writer.write(_chunk(frame))
                continue
            for start in range(0, len(frame), split):
                writer.write(_chunk(frame[start : start + split]))
                await writer.drain()
                await asyncio.sleep(0)
        return True
