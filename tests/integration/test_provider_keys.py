"""Where a local run sends each provider's jobs (``--provider-url``) and with which key.

A provider's key comes only from its own ``api_key_env`` (a bare ``--provider-url``: from
``CHATBATCH_API_KEY``, the key of that one URL); no other provider's key is ever sent in
its place. The endpoints are simulators on loopback that accept exactly one key each.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from chatbatch.cli.app import app
from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime
from chatbatch.local.simulator import Simulator, SimulatorSettings

pytestmark = pytest.mark.slow
runner = CliRunner()
OPENAI_KEY = "sk-openai-only-for-openai"
DEEPSEEK_KEY = "sk-deepseek-only-for-deepseek"
KEY_ENVS = ("CHATBATCH_API_KEY", "OPENAI_API_KEY", "DEEPSEEK_API_KEY", "GEMINI_API_KEY")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the keys a test sets are in the environment."""
    for name in KEY_ENVS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def sims() -> Iterator[dict[str, Simulator]]:
    """One endpoint per provider, each accepting only that provider's key."""
    with (
        Simulator(SimulatorSettings(api_key=DEEPSEEK_KEY)) as deepseek,
        Simulator(SimulatorSettings(api_key=OPENAI_KEY)) as openai,
    ):
        yield {"deepseek": deepseek, "openai": openai}


def jobs_file(tmp_path: Path, models: list[str]) -> Path:
    path = tmp_path / "jobs.jsonl"
    lines = [
        {"custom_id": f"j{i}", "model": model, "prompt": f"question {i}", "max_tokens": 8}
        for i, model in enumerate(models)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def read_jsonl(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.open()] if path.exists() else []


@pytest.mark.parametrize("form", ["deepseek=URL", "URL"])
def test_an_openai_key_is_never_sent_for_deepseek(
    form: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only OPENAI_API_KEY is set: DeepSeek's jobs go out with no key at all. The endpoint
    would even accept the OpenAI key, and still receives nothing; each job is paused with
    an error naming the provider and the variable to set, and none fails."""
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    with Simulator(SimulatorSettings(api_key=OPENAI_KEY)) as endpoint:
        url = form.replace("URL", endpoint.base_url)
        options = LocalOptions(provider_urls=[url], timeout_s=60)
        with LocalRuntime(options) as rt:
            summary = rt.run(jobs_file(tmp_path, ["deepseek-chat"] * 2), tmp_path / "out")
        stats = endpoint.stats()
    assert (stats.requests, stats.by_status) == (0, {}), "the OpenAI key went to DeepSeek"
    assert (summary.succeeded, summary.failed, summary.paused) == (0, 0, 2)
    errors = read_jsonl(tmp_path / "out" / "errors.jsonl")
    env = "DEEPSEEK_API_KEY" if form.startswith("deepseek=") else "CHATBATCH_API_KEY"
    for error in errors:
        message = error["error"]["message"]
        assert "provider deepseek has no API key" in message and env in message, message
        assert OPENAI_KEY not in json.dumps(error)


def test_each_provider_goes_to_its_own_url_with_its_own_key(
    sims: dict[str, Simulator], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--provider-url deepseek=A --provider-url openai=B``: through the CLI, each
    endpoint receives its provider's jobs and no other, each with its own key."""
    monkeypatch.setenv("DEEPSEEK_API_KEY", DEEPSEEK_KEY)
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    models = ["deepseek-chat", "gpt-4.1", "deepseek-chat", "gpt-4.1", "deepseek-chat"]
    out = tmp_path / "out"
    urls = [f"--provider-url={name}={sim.base_url}" for name, sim in sims.items()]
    args = ["local", "run", str(jobs_file(tmp_path, models)), "--out", str(out), *urls]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    summary = json.loads(result.stdout)
    assert (summary["succeeded"], summary["paused"], summary["failed"]) == (5, 0, 0)
    calls = {
        name: {model: bill.calls for model, bill in sim.stats().billed_by_model.items()}
        for name, sim in sims.items()
    }
    assert calls == {"deepseek": {"deepseek-chat": 3}, "openai": {"gpt-4.1": 2}}
    assert all(sim.stats().by_status.get("401", 0) == 0 for sim in sims.values())
    answered = {
        line["custom_id"]: line["response"]["body"]["model"]
        for line in read_jsonl(out / "results.jsonl")
    }
    assert answered == {f"j{i}": model for i, model in enumerate(models)}


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("nope=http://127.0.0.1:9/v1", "no provider 'nope' in the config; its providers: "),
        ("deepseek=http://api.example.com/v1", "plain http:// sends the API key unencrypted"),
        ("deepseek=not-a-url", "--provider-url deepseek=not-a-url: base_url"),
        ("ftp://127.0.0.1/v1", "--provider-url ftp://127.0.0.1/v1: base_url"),
    ],
)
def test_a_bad_provider_url_is_refused_before_anything_runs(
    value: str, said: str, tmp_path: Path
) -> None:
    jobs = jobs_file(tmp_path, ["deepseek-chat"])
    result = runner.invoke(app, ["local", "run", str(jobs), "--provider-url", value])
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert said in result.stderr, result.stderr


def test_a_provider_or_a_bare_url_given_twice_is_refused(tmp_path: Path) -> None:
    jobs = jobs_file(tmp_path, ["deepseek-chat"])
    url = "http://127.0.0.1:9/v1"
    for twice, said in [
        ([f"deepseek={url}", f"deepseek={url}"], "provider 'deepseek' is given twice"),
        ([url, url], "a second bare URL"),
    ]:
        args = [arg for value in twice for arg in ("--provider-url", value)]
        result = runner.invoke(app, ["local", "run", str(jobs), *args])
        assert result.exit_code == 2 and said in result.stderr, result.stderr


def config_file(tmp_path: Path, key_envs: dict[str, str | None]) -> Path:
    """The shipped config with each provider of ``key_envs`` given that ``api_key_env``
    (None: none, as a config that does not name it), as JSON the local runtime reads."""
    data = tomllib.loads((ROOT / "chatbatch.toml").read_text())
    for name, env in key_envs.items():
        data["providers"][name].pop("api_key_env", None)
        if env is not None:
            data["providers"][name]["api_key_env"] = env
    path = tmp_path / "chatbatch.json"
    path.write_text(json.dumps(data, default=str))  # prices_as_of: a TOML date
    return path


def test_providers_naming_no_key_variable_each_read_their_own(
    sims: dict[str, Simulator], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config that names no ``api_key_env`` (as older configs do), each provider at its
    own URL: each key comes from ``<NAME>_API_KEY``. ``CHATBATCH_API_KEY`` holds the
    DeepSeek key, and it never reaches the OpenAI endpoint (it once was both providers'
    default, so OpenAI's jobs were sent with DeepSeek's key)."""
    monkeypatch.setenv("CHATBATCH_API_KEY", DEEPSEEK_KEY)
    monkeypatch.setenv("DEEPSEEK_API_KEY", DEEPSEEK_KEY)
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    options = LocalOptions(
        config_path=config_file(tmp_path, {"deepseek": None, "openai": None}),
        provider_urls=[f"{name}={sim.base_url}" for name, sim in sims.items()],
        timeout_s=60,
    )
    models = ["deepseek-chat", "gpt-4.1", "gpt-4.1", "deepseek-chat"]
    with LocalRuntime(options) as rt:
        summary = rt.run(jobs_file(tmp_path, models), tmp_path / "out")
    assert all(sim.stats().by_status.get("401", 0) == 0 for sim in sims.values())
    assert (summary.succeeded, summary.failed, summary.paused) == (4, 0, 0)
    calls = {
        name: {model: bill.calls for model, bill in sim.stats().billed_by_model.items()}
        for name, sim in sims.items()
    }
    assert calls == {"deepseek": {"deepseek-chat": 2}, "openai": {"gpt-4.1": 2}}
    envs = {name: rt.config.key_env(name) for name in sims}
    assert envs == {"deepseek": "DEEPSEEK_API_KEY", "openai": "OPENAI_API_KEY"}


def test_two_providers_at_two_urls_reading_one_variable_are_refused(tmp_path: Path) -> None:
    """Two providers that name one ``api_key_env`` and go to different URLs would send one
    provider's key to the other: the run is refused before anything is sent, naming both
    providers and the variable. A bare ``--provider-url`` that shares the variable with a
    provider sent elsewhere is refused the same way."""
    jobs = jobs_file(tmp_path, ["deepseek-chat"])
    url = "http://127.0.0.1:9/v1"
    cases = [
        ({"deepseek": "SHARED_KEY", "openai": "SHARED_KEY"}, [], "SHARED_KEY"),
        ({"deepseek": "CHATBATCH_API_KEY"}, [url, "deepseek=http://127.0.0.2:9/v1"], None),
    ]
    for key_envs, urls, env in cases:
        config = config_file(tmp_path, dict(key_envs))
        args = [arg for value in urls for arg in ("--provider-url", value)]
        result = runner.invoke(app, ["local", "run", str(jobs), "--config", str(config), *args])
        assert result.exit_code == 2, (result.stdout, result.stderr, result.exception)
        if env is None:  # the bare URL's providers come first or last: which pair is named
            assert "both read their API key from CHATBATCH_API_KEY" in result.stderr
            assert "'deepseek'" in result.stderr, result.stderr
        else:
            said = f"providers 'deepseek' and 'openai' both read their API key from {env}"
            assert said in result.stderr, result.stderr
        assert "give each provider its own api_key_env" in result.stderr
