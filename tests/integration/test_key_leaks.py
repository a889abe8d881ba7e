"""No piece of an API key on any output path, whatever the stored key looks like.

Keys with a line break, quotes, a backslash, non-ASCII text and header-breaking
characters go through every way a call can fail: a malformed key (refused when read,
never sent; the model pauses as on a 401), an illegal header, a refused connection, TLS
spoken to a plain port, a 401, a read timeout and a provider message echoing the key
escaped. Every log line (Powertools' formatter), error, attempt record, S3 object, output
file, breaker record and CLI output is searched for any 6-character piece of the key's
secret part, raw or escaped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

from chatbatch.core.config import Config, Provider, Retries
from chatbatch.local.simulator import Simulator, SimulatorSettings
from chatbatch.provider.client import ProviderClient
from chatbatch.provider.errors import AccountReason, ProviderError
from chatbatch.provider.keys import MalformedKeyError, Redactor, checked_key
from chatbatch.provider.retry import classify
from chatbatch.worker import services

PIECE = 6
PREFIX = "sk-"
# secret parts (after PREFIX): each malformed in its own way
MALFORMED = {
    "newline": "Qw7rT2Lk\nZp9Lk4Xv8Mn3",
    "pretty JSON": '{\n  "api_key": "Hq4Wz8RtVb"\n}',
    "two keys": "Ab3Cd5Ef7Gh sk-Ij9Kl1Mn3Op",
    "unicode": "Jx5Kc9é\u00dcb7Yd3Fg1",
    "header break": "Tn6Rb2Wq\r\nX-Injected: Ys8Pd4Hm",
    "control": "Uv2Wx4Yz\x1bBc6De8Fg\x7f",
}
# legal header values the provider refuses: they reach HTTP
ODD = {"quotes": "Rq5\"St7'Uv9\\Wx1Yz3", "plain": "Kd8Fj2Lp6Qs4Tv0Xz"}


def _pieces(secret: str) -> set[str]:
    forms = {secret, json.dumps(secret)[1:-1], repr(secret)[1:-1], ascii(secret)[1:-1]}
    forms.add(repr(secret.encode("utf-8", "backslashreplace"))[2:-1])
    return {f[i : i + PIECE] for f in forms for i in range(len(f) - PIECE + 1)}


def _assert_clean(secret: str, texts: list[str]) -> None:
    pieces = _pieces(secret)
    for text in texts:
        found = sorted(p for p in pieces if p in text)
        assert not found, f"key pieces {found} in {text[:300]!r}"


@pytest.fixture
def logs() -> Iterator[list[str]]:
    """Every record of the chatbatch loggers, as Powertools formats it."""
    records: list[str] = []
    handler = logging.Handler()
    handler.setFormatter(LambdaPowertoolsFormatter())
    handler.emit = lambda record: records.append(handler.format(record))  # type: ignore[method-assign]
    root = logging.getLogger("chatbatch")
    root.addHandler(handler)
    try:
        yield records
    finally:
        root.removeHandler(handler)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(config: Config, base_url: str, *, read_s: float = 2.0) -> Config:
    timeouts = {"connect_s": 0.5, "read_s": read_s, "write_s": 2, "pool_s": 2, "total_s": 20}
    provider = Provider.model_validate({"base_url": base_url, "timeouts": timeouts})
    retries = Retries(max_attempts=2, base_s=0.01, max_backoff_s=0.02)
    return config.model_copy(
        update={"providers": dict.fromkeys(config.providers, provider), "retries": retries}
    )


def _fails(config: Config, key: str, body: dict[str, Any] | None = None) -> ProviderError:
    async def go() -> ProviderError:
        client = ProviderClient(config, lambda _: key)
        try:
            with pytest.raises(ProviderError) as info:
                await client.complete("deepseek-chat", body or _body())
        finally:
            await client.aclose()
        return info.value

    return asyncio.run(go())


def _body(**extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": "hi"}]
    return {"model": "deepseek-chat", "messages": messages, "max_tokens": 8} | extra


def _error_texts(err: ProviderError) -> list[str]:
    return [str(err), repr(err), err.message, *(a.model_dump_json() for a in err.attempts)]


# --- read: checked, and named by where it came from --------------------------------


@pytest.mark.parametrize("secret", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_key_is_refused_by_name_and_never_sent(
    config: Config, secret: str, monkeypatch: pytest.MonkeyPatch, logs: list[str]
) -> None:
    monkeypatch.setenv("DEEPSEEK_API_KEY", PREFIX + secret)
    with pytest.raises(MalformedKeyError) as read:
        services.api_key("deepseek")
    assert "environment variable DEEPSEEK_API_KEY" in str(read.value)
    assert "malformed" in str(read.value)
    with Simulator(SimulatorSettings(api_key="sk-other")) as sim:
        err = _fails(_config(config, sim.base_url), PREFIX + secret)
        assert sim.stats().requests == 0, "a malformed key never reaches the provider"
    assert (err.account, err.code, err.permanent) == (
        AccountReason.auth,
        "malformed_api_key",
        True,
    )
    _assert_clean(secret, [str(read.value), *_error_texts(err), *logs])


def test_a_key_is_stripped_at_its_ends_and_printable_ascii_passes() -> None:
    assert checked_key("  sk-abc\"'\\~!def\n", "x") == "sk-abc\"'\\~!def"
    assert checked_key(" \n", "x") is None


# --- transport errors: fixed texts ----------------------------------------------------


@pytest.mark.parametrize("secret", MALFORMED.values(), ids=MALFORMED.keys())
def test_transport_errors_are_fixed_texts_without_the_header(secret: str) -> None:
    """httpx's own errors, met for real, with the key as the header (no check first)."""

    async def errors() -> list[httpx.TransportError]:
        header = {"authorization": f"Bearer {PREFIX}{secret}".encode("utf-8", "replace")}
        met: list[httpx.TransportError] = []
        with Simulator(SimulatorSettings()) as sim:
            urls = [
                sim.base_url + "/chat/completions",  # an illegal header value
                f"http://127.0.0.1:{_closed_port()}/v1/chat/completions",  # refused
                sim.base_url.replace("http:", "https:") + "/chat/completions",  # TLS, plain port
            ]
            async with httpx.AsyncClient(timeout=0.5) as client:
                for url in urls:
                    try:
                        await client.post(url, headers=header, json={})
                    except httpx.TransportError as err:
                        met.append(err)
        return met

    met = asyncio.run(errors())
    assert len(met) >= 2
    texts = [classify(err)[0] for err in met]
    assert all(
        ": " in t and t.split(":")[0] == type(e).__name__ for t, e in zip(texts, met, strict=True)
    )
    _assert_clean(secret, texts)


# --- HTTP failures with a key the provider refuses -----------------------------------


@pytest.mark.parametrize("secret", ODD.values(), ids=ODD.keys())
def test_every_failure_path_of_a_call_keeps_the_key_out(
    config: Config, secret: str, logs: list[str]
) -> None:
    key = PREFIX + secret
    failures: list[ProviderError] = []
    with Simulator(SimulatorSettings(api_key=key, hang_s=3)) as sim:
        cfg = _config(config, sim.base_url, read_s=0.3)
        # the provider echoes the key escaped (JSON, repr) and in pieces
        for echoed in (key, json.dumps(key), repr(key), key[3:12], key[-9:]):
            failures.append(_fails(cfg, key, _body(messages=[{"role": echoed, "content": "x"}])))
        assert all("[redacted]" in f.message for f in failures)
        sim.inject("hang", "hang")
        failures.append(_fails(cfg, key))  # read timeouts
        wrong = Simulator(SimulatorSettings(api_key="sk-someone-else"))
        with wrong:
            failures.append(_fails(_config(config, wrong.base_url), key))  # 401
        assert failures[-1].account is AccountReason.auth
    failures.append(_fails(_config(config, f"http://127.0.0.1:{_closed_port()}/v1"), key))
    assert any("retrying" in line for line in logs)
    _assert_clean(secret, [text for f in failures for text in _error_texts(f)] + logs)


@pytest.mark.parametrize("secret", ODD.values(), ids=ODD.keys())
def test_an_anthropic_provider_keeps_the_key_out_too(
    config: Config, secret: str, logs: list[str]
) -> None:
    """Kind anthropic sends the key as x-api-key: echoed in an Anthropic error body (an
    unknown field named by it), refused (401), or timed out, it is nowhere."""
    key = PREFIX + secret

    def anthropic(base_url: str) -> Config:
        cfg = _config(config, base_url, read_s=0.3)
        provider = cfg.providers["deepseek"].model_copy(update={"kind": "anthropic"})
        models = {
            n: m.model_copy(update={"cache_write_per_m": m.input_per_m})
            for n, m in cfg.models.items()
        }
        return cfg.model_copy(
            update={"providers": dict.fromkeys(cfg.providers, provider), "models": models}
        )

    body = {
        "model": "deepseek-chat",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "x"}],
    }
    failures: list[ProviderError] = []
    with Simulator(SimulatorSettings(api_key=key, hang_s=3)) as sim:
        cfg = anthropic(sim.base_url)
        for echoed in (key, json.dumps(key), key[3:12], key[-9:]):
            failures.append(_fails(cfg, key, body | {echoed: 1}))
        assert all("[redacted]" in f.message for f in failures)
        assert all(f.answer is not None and f.answer.body["type"] == "error" for f in failures)
        sim.inject("hang")
        failures.append(_fails(cfg, key, body))  # a read timeout
        wrong = Simulator(SimulatorSettings(api_key="sk-someone-else"))
        with wrong:
            failures.append(_fails(anthropic(wrong.base_url), key, body))  # 401
        assert failures[-1].account is AccountReason.auth
        assert sim.stats().requests == 5  # x-api-key accepted: each reached the simulator
    answers = [json.dumps(f.answer.body) for f in failures if f.answer is not None]
    _assert_clean(secret, [text for f in failures for text in _error_texts(f)] + logs + answers)


def test_redaction_covers_escaped_forms_and_pieces() -> None:
    key = 'sk-Ab3"Cd5\\Ef7Gh9'
    redact = Redactor(key)
    for leak in (key, json.dumps(key), repr(key), key[4:10], f"x{key[6:14]}y"):
        assert "[redacted]" in redact(f"said {leak} here")
        _assert_clean(key[3:], [redact(f"said {leak} here")])
    assert redact("nothing here") == "nothing here"


# --- the local runtime and the CLI: logs, S3, outputs, breaker ------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "secret",
    [MALFORMED["newline"], MALFORMED["header break"], ODD["quotes"]],
    ids=["newline", "header break", "quotes (a 401)"],
)
def test_a_local_run_with_a_bad_key_pauses_and_leaks_nothing(secret: str, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    lines = [{"custom_id": f"a{i}", "prompt": f"q{i}", "max_tokens": 8} for i in range(3)]
    jobs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    env = os.environ | {"CHATBATCH_API_KEY": PREFIX + secret, "OPENAI_API_KEY": ""}
    with Simulator(SimulatorSettings(api_key="sk-the-right-one")) as sim:
        args = ["local", "run", str(jobs), "--out", str(out), "--provider-url", sim.base_url]
        chatbatch = Path(sys.executable).parent / "chatbatch"
        result = subprocess.run(
            [str(chatbatch), *args, "--json"],
            check=False,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        requests = sim.stats().requests
    assert result.returncode == 0, (result.stdout, result.stderr)
    summary = json.loads(result.stdout)
    assert (summary["failed"], summary["paused"]) == (0, 3), "a bad key fails no job"
    errors = [json.loads(line) for line in (out / "errors.jsonl").open()]
    message = errors[0]["error"]["message"]
    if secret in MALFORMED.values():
        assert requests == 0
        assert "malformed" in message and "CHATBATCH_API_KEY" in message
    else:
        assert requests >= 1 and "Incorrect API key" in message
    # out/.state journals every S3 and DynamoDB write of the run: records, breaker, all
    files = [p for p in out.rglob("*") if p.is_file()]
    texts = [result.stdout, result.stderr, *(p.read_text(errors="replace") for p in files)]
    assert any("model paused" in line for line in (out / "worker.log").open())
    _assert_clean(secret, texts)
