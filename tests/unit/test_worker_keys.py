"""Where the worker finds a provider's API key, and that it never carries a newline."""

from __future__ import annotations

import pytest

from chatbatch.worker import services as worker


def test_key_from_the_providers_env_var_then_the_fallbacks(monkeypatch: pytest.MonkeyPatch):
    for name in ("DEEPSEEK_API_KEY", "CHATBATCH_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(worker.secret_env("deepseek"), raising=False)
    assert worker.api_key("deepseek") is None
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    assert worker.api_key("deepseek") == "sk-openai"
    # a key saved from a file ends in a newline, which httpx would quote in its error
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-deepseek\n")
    assert worker.api_key("deepseek") == "sk-deepseek"


def test_secret_env_names_are_safe():
    assert worker.secret_env("my-gateway.v2") == "CHATBATCH_SECRET_MY_GATEWAY_V2"
