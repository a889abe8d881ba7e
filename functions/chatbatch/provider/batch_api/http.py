"""One provider's batch endpoints over HTTP (``BatchHttp``): a synchronous ``httpx.Client``
at the provider's ``base_url`` with its key and headers found as the chat client finds
them (``provider.client.provider_key`` and ``auth_headers``: ``Authorization: Bearer``
for kind openai, ``x-api-key`` and ``anthropic-version`` for kind anthropic), its
timeouts, and the same TLS context. The scheduled function makes a few calls per run, so
no retries here: a failed call is a ``BatchApiError`` (``transient`` says whether the next
run may try again), its text the provider's message with the key redacted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import httpx

from chatbatch.core.config import Config, Provider
from chatbatch.provider.batch_api.common import BatchApiError, BatchState
from chatbatch.provider.client import (
    USER_AGENT,
    ApiKeyLookup,
    auth_headers,
    provider_key,
    tls_context,
)
from chatbatch.provider.errors import ProviderError, response_error
from chatbatch.provider.keys import Redactor

PAGE_SIZE = 100  # the most a page of OpenAI's list holds (Anthropic's: 1,000)


class BatchHttp:
    """Calls under one provider's ``base_url`` (``path`` is what follows it)."""

    def __init__(
        self,
        config: Config,
        provider: str,
        api_key: ApiKeyLookup,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.name = provider
        self.provider: Provider = config.providers[provider]
        self._api_key = api_key
        t = self.provider.timeouts
        self._client = httpx.Client(
            timeout=httpx.Timeout(
                connect=t.connect_s, read=t.read_s, write=t.write_s, pool=t.pool_s
            ),
            transport=transport,
            headers={"user-agent": USER_AGENT},
            verify=tls_context(),
        )

    def url(self, path: str) -> str:
        return str(self.provider.base_url).rstrip("/") + path

    def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        files: dict[str, Any] | None = None,
        data: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One request; its 2xx response, else ``BatchApiError``."""
        return self._send(method, path, json=json, files=files, data=data, params=params)

    @contextmanager
    def stream(self, method: str, path: str) -> Iterator[httpx.Response]:
        """One request whose 2xx body is read as the caller goes (``iter_lines``), and
        closed on leaving, read to its end or not: a batch's results may be far larger than
        the part of them the caller needs. A read that breaks is a ``BatchApiError`` too."""
        response = self._send(method, path, stream=True)
        try:
            yield response
        except httpx.HTTPError as err:
            raise BatchApiError(
                f"{method} {path}: the answer broke off ({type(err).__name__})", status=None
            ) from None
        finally:
            response.close()

    def _send(self, method: str, path: str, *, stream: bool = False, **kw: Any) -> httpx.Response:
        try:
            key = provider_key(self._api_key, self.name)
        except ProviderError as err:
            raise BatchApiError(str(err), status=None, code=err.code) from None
        redact = Redactor(key)
        headers = auth_headers(key, self.provider)
        if kw.get("files") is not None:
            headers.pop("content-type")  # httpx writes the multipart boundary
        try:
            request = self._client.build_request(method, self.url(path), headers=headers, **kw)
            response = self._client.send(request, stream=stream)
        except httpx.HTTPError as err:
            raise BatchApiError(
                redact(f"{method} {path}: no answer ({type(err).__name__})"), status=None
            ) from None
        if response.is_success:
            return response
        try:
            content = response.read()  # (a streamed error's body is small)
        except httpx.HTTPError:
            content = b""
        finally:
            response.close()
        message, code, _ = response_error(response.status_code, content)
        raise BatchApiError(
            redact(f"{method} {path}: {response.status_code} {message}"),
            status=response.status_code,
            code=code,
        )

    def close(self) -> None:
        self._client.close()


class HttpBatchClient:
    """What both providers' batch clients share: one ``BatchHttp`` to the provider, the
    batches under ``path``, a batch object read by ``state`` (each provider's own), and
    the list's pages, newest first, each page's last id the ``cursor`` parameter that asks
    for the next (older) one (OpenAI ``after``, Anthropic ``after_id``)."""

    path: ClassVar[str]
    cursor: ClassVar[str]
    state: Callable[[dict[str, Any]], BatchState]

    def __init__(
        self,
        config: Config,
        provider: str,
        api_key: ApiKeyLookup,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.http = BatchHttp(config, provider, api_key, transport=transport)

    def poll(self, batch_id: str) -> BatchState:
        return self.state(self.http.call("GET", f"{self.path}/{batch_id}").json())

    def cancel(self, batch_id: str) -> BatchState:
        return self.state(self.http.call("POST", f"{self.path}/{batch_id}/cancel").json())

    def listed(self, created_after: float, *, page_size: int = PAGE_SIZE) -> Iterator[BatchState]:
        """Every batch the provider holds that was created at ``created_after`` or later,
        newest first, page by page as the caller goes: it stops at the first older batch,
        so finding the batches of the last hour costs a page or two, not the account's
        history. ``created_after`` is on the provider's clock, which is not ours: a
        caller that looks for a batch it created after a moment of its own gives some
        margin (OpenAI's ``created_at`` is in whole seconds, too).

        A cursor the provider no longer knows (a batch deleted since) may start the list
        over: the batches listed already are passed over and the list goes on from its
        page's last id. The same page answered twice for the same cursor is a list that
        goes round (it would page forever): a transient ``BatchApiError``, never the end
        of the list, as a caller must not take a list cut short for "no such batch" and
        create a second one."""
        seen: set[str] = set()
        answered: dict[str | None, list[str]] = {}  # each cursor sent -> its page's ids
        params = {"limit": str(page_size)}
        while True:
            page = self.http.call("GET", self.path, params=params).json()
            data = page.get("data") or []
            cursor, ids = params.get(self.cursor), [str(raw.get("id")) for raw in data]
            if answered.get(cursor) == ids:
                raise BatchApiError(
                    f"GET {self.path}: the page after {cursor} came twice (a list that goes round)",
                    status=None,
                )
            answered[cursor] = ids
            for state in map(self.state, data):
                if state.id in seen:
                    continue
                if state.created_at < created_after:
                    return
                seen.add(state.id)
                yield state
            if not data or not page.get("has_more"):
                return
            params[self.cursor] = str(page.get("last_id") or ids[-1])

    def ended(self, batch_id: str) -> BatchState:
        """The batch, once it has ended; a ``BatchApiError`` while it runs."""
        state = self.poll(batch_id)
        if not state.ended:
            raise BatchApiError(
                f"provider batch {batch_id} is {state.status}: its results are not ready",
                status=None,
            )
        return state
