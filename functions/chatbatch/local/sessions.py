"""The local runtime's boto3 default session: one client per service and settings.

On Lambda each worker instance builds its own clients once, in its own process. Here the
20 emulated instances of a run live in one process, and a botocore client costs ~12 ms of
CPU to build (its event hooks copied, its endpoint rules parsed): a run's instances built
~120 of them, more than a short run's jobs cost. botocore clients are thread-safe, so the
run's instances share one per service and settings (`SharedClients.client`), as the
connection pool of a client is shared by an instance's own threads.

Every session also reads the service models through the process's one loader (botocore
parses a model's JSON once per loader: ~0.7 s of CPU per run otherwise).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import boto3
import botocore.loaders
import botocore.session
from botocore.config import Config as BotoConfig

LOADER = botocore.loaders.create_loader()


def _settings(value: Any) -> Any:
    if isinstance(value, BotoConfig):
        options: dict[str, Any] = value._user_provided_options  # type: ignore[attr-defined]
        return tuple(sorted((k, repr(v)) for k, v in options.items()))
    return repr(value)


class SharedClients(boto3.session.Session):
    """A boto3 session whose ``client`` returns one client per service and settings."""

    def __init__(self) -> None:
        core = botocore.session.get_session()
        core.register_component("data_loader", LOADER)
        super().__init__(botocore_session=core)
        self._clients: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()

    def client(self, *args: Any, **kwargs: Any) -> Any:
        key = (
            tuple(_settings(a) for a in args),
            tuple(sorted((k, _settings(v)) for k, v in kwargs.items())),
        )
        with self._lock:
            made = self._clients.get(key)
            if made is None:
                made = self._clients[key] = super().client(*args, **kwargs)
            return made

    def register(self, event: str, handler: Callable[..., Any]) -> None:
        """A botocore event hook on this session and on every client it has made (a client
        copies its session's hooks when it is made)."""
        with self._lock:
            self.events.register(event, handler)
            for made in self._clients.values():
                made.meta.events.register(event, handler)


def install() -> SharedClients:
    """A fresh default session for a run (its event hooks and clients its own)."""
    boto3.DEFAULT_SESSION = session = SharedClients()
    return session


def register(event: str, handler: Callable[..., Any]) -> None:
    """A hook on the run's session (``SharedClients.register``): its clients included."""
    session = boto3.DEFAULT_SESSION
    if not isinstance(session, SharedClients):
        raise RuntimeError("no local run's session: start a LocalRuntime first")
    session.register(event, handler)
