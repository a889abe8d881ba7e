"""One batch API client per provider (``BatchClients``), made when first needed, with
the provider's key found as the synchronous client finds it."""

from __future__ import annotations

import httpx

from chatbatch.core.config import Config
from chatbatch.provider.batch_api import AnthropicBatchClient, BatchApi, OpenAIBatchClient
from chatbatch.provider.client import ApiKeyLookup


class BatchClients:
    def __init__(
        self, config: Config, api_key: ApiKeyLookup, transport: httpx.BaseTransport | None = None
    ) -> None:
        self._config = config
        self._api_key = api_key
        self._transport = transport
        self._clients: dict[str, BatchApi] = {}

    def of(self, provider: str, api: str) -> BatchApi:
        """The client of ``provider``'s batch API (``api``: ``openai`` | ``anthropic``)."""
        client = self._clients.get(provider)
        if client is None:
            kind = OpenAIBatchClient if api == "openai" else AnthropicBatchClient
            client = kind(self._config, provider, self._api_key, transport=self._transport)
            self._clients[provider] = client
        return client
