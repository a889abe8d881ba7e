"""One provider's batch endpoints over HTTP (``BatchHttp``): a synchronous ``httpx.Client``
at the provider's ``base_url`` with its key and headers found as the chat client finds
them (``provider.client.provider_key`` and ``auth_headers``: ``Authorization: Bearer``
for kind openai, ``x-api-key`` and ``anthropic-version`` for kind anthropic), its
timeouts, and the same TLS context. The scheduled function makes a few calls per run, so
no retries here: a failed call is a ``BatchApiError`` (``transient`` says whether the next
run may try again), its text the provider's message with the key redacted.
"""

from __future__ import annotations

from collections.abc import Callable
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
    ) -> httpx.Response:
        """One request; its 2xx response, else ``BatchApiError``."""
        try:
            key = provider_key(self._api_key, self.name)
        except ProviderError as err:
            raise BatchApiError(str(err), status=None, code=err.code) from None
        redact = Redactor(key)
        headers = auth_headers(key, self.provider)
        if files is not None:
            headers.pop("content-type")  # httpx writes the multipart boundary
        try:
            response = self._client.request(
                method, self.url(path), json=json, files=files, data=data, headers=headers
            )
        except httpx.HTTPError as err:
            raise BatchApiError(
                redact(f"{method} {path}: no answer ({type(err).__name__})"), status=None
            ) from None
        if response.is_success:
            return response
        message, code, _ = response_error(response.status_code, response.content)
        raise BatchApiError(
            redact(f"{method} {path}: {response.status_code} {message}"),
            status=response.status_code,
            code=code,
        )

    def close(self) -> None:
        self._client.close()


class HttpBatchClient:
    """What both providers' batch clients share: one ``BatchHttp`` to the provider, the
    batches under ``path``, and a batch object read by ``state`` (each provider's own)."""

    path: ClassVar[str]
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

    def ended(self, batch_id: str) -> BatchState:
        """The batch, once it has ended; a ``BatchApiError`` while it runs."""
        state = self.poll(batch_id)
        if not state.ended:
            raise BatchApiError(
                f"provider batch {batch_id} is {state.status}: its results are not ready",
                status=None,
            )
        return state
