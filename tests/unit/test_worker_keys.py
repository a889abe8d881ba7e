"""Where the worker finds a provider's API key, and that it never carries a newline."""

from __future__ import annotations

import pytest

from chatbatch.provider.keys import MissingKeyError
from chatbatch.worker import services as worker


def test_key_from_the_providers_own_env_var_and_no_other(monkeypatch: pytest.MonkeyPatch):
    for name in ("DEEPSEEK_API_KEY", "CHATBATCH_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(worker.secret_env("deepseek"), raising=False)
    # another provider's key, or the shared one, is never DeepSeek's
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    monkeypatch.setenv("CHATBATCH_API_KEY", "sk-shared")
    with pytest.raises(MissingKeyError) as missing:
        worker.api_key("deepseek")
    assert str(missing.value).startswith(
        "provider deepseek has no API key: set the environment variable DEEPSEEK_API_KEY"
    )
    monkeypatch.setenv("DEEPSEEK_API_KEY", "  ")
    with pytest.raises(MissingKeyError):
        worker.api_key("deepseek")
    # a key saved from a file ends in a newline, which httpx would quote in its error
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-deepseek\n")
    assert worker.api_key("deepseek") == "sk-deepseek"
    assert worker.api_key("openai") == "sk-openai"


def test_secret_env_names_are_safe():
    assert worker.secret_env("my-gateway.v2") == "CHATBATCH_SECRET_MY_GATEWAY_V2"
