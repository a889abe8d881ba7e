"""What a local run can be told (``LocalOptions``), and the config its workers run with:
where each provider is sent (``--provider-url``) and where its key comes from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from pydantic import ValidationError

from chatbatch.core.config import (
    Config,
    ConfigError,
    Priority,
    Provider,
    format_error,
    parse_config,
)
from chatbatch.local.simulator import SimulatorSettings


@dataclass
class LocalOptions:
    config_path: Path | None = None
    # --provider-url, as given: URL (every provider there, one key) and NAME=URL (that
    # provider there, with its own key); none: the simulator answers
    provider_urls: Sequence[str] = ()
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: Decimal | None = None
    priority: Priority | None = None
    concurrency: int | None = None
    seed: int = 0
    batch_id: str = "local"
    simulator: SimulatorSettings | None = None
    server: bool = False  # moto's HTTP server instead of in-process (``local up``)
    port: int = 0  # moto server's port (0: a free one)
    timeout_s: float = 3600.0
    # redelivery after a crash; default: the function timeout + 1 min (never while it runs)
    visibility_timeout_s: int | None = None
    log_level: str = "WARNING"
    log_file: Path | None = None  # the worker's JSON log lines go here instead of stdout
    log_stderr: bool = False  # or to stderr (`local up --json`: stdout is its JSON line)
    # the journal's directory: the state survives the process (None: in memory only)
    state_dir: Path | None = None
    stop_grace_s: float = 15.0  # stopped early: how long the calls in flight may finish
    # each DynamoDB item may take this many write units a second, refused past it as
    # DynamoDB refuses a hot key (``chatbatch.local.throttle``); None: no limit, as moto
    throttle_wcu_s: float | None = None
    # the gatherer's schedule (the batch route: deployed, every GATHER_EVERY_MIN minutes)
    gather_every_s: float = 5.0


SHARED_KEY_ENV = "CHATBATCH_API_KEY"  # the key of a bare --provider-url (and the simulator's)


def parse_provider_urls(values: Sequence[str]) -> tuple[str | None, dict[str, str]]:
    """``--provider-url`` values: at most one bare URL (every provider not named goes
    there, with the key in ``CHATBATCH_API_KEY``) and any ``NAME=URL`` (that provider
    goes there, with its own ``api_key_env``). A ``ConfigError`` says what is wrong."""
    bare: str | None = None
    named: dict[str, str] = {}
    for value in values:
        name, sep, url = value.partition("=")
        if sep and "://" not in name:
            if name in named:
                raise ConfigError(f"--provider-url {value}: provider {name!r} is given twice")
            named[name] = _checked_url(value, url)
        elif bare is not None:
            raise ConfigError(
                f"--provider-url {value}: a second bare URL (the first: {bare}); give one "
                "URL for every provider, and NAME=URL for each provider to send elsewhere"
            )
        else:
            bare = _checked_url(value, value)
    return bare, named


def _checked_url(value: str, url: str) -> str:
    """``url`` if it can be a provider's base_url (https, or plain http to loopback)."""
    try:
        Provider.model_validate({"base_url": url})
    except ValidationError as err:
        raise ConfigError(
            f"--provider-url {value}: {format_error(err)}; give an OpenAI-compatible /v1 URL "
            "(e.g. https://api.deepseek.com/v1), or NAME=URL for one provider"
        ) from None
    return url


def effective_config(config: Config, options: LocalOptions, simulator_url: str | None) -> Config:
    """The config the local workers run with. Every provider goes to the simulator
    (``simulator_url``), else to a bare ``--provider-url``, with the key in
    ``CHATBATCH_API_KEY``; a provider named in ``--provider-url NAME=URL`` goes to its URL
    with its own ``api_key_env``, as does one named nowhere when no bare URL is given (to
    its configured ``base_url``). A ``ConfigError`` names an unknown provider or a bad URL."""
    bare, named = parse_provider_urls(options.provider_urls)
    unknown = sorted(set(named) - set(config.providers))
    if unknown:
        raise ConfigError(
            f"--provider-url {unknown[0]}=...: no provider {unknown[0]!r} in the config; "
            f"its providers: {', '.join(sorted(config.providers))} ([providers.NAME])"
        )
    shared_url = simulator_url or bare
    data = config.model_dump(mode="json")
    for name, provider in data["providers"].items():
        if name in named:
            provider["base_url"] = named[name]
        elif shared_url:
            provider["base_url"] = shared_url
            provider["api_key_env"] = SHARED_KEY_ENV
        provider.pop("secret_arn", None)
    for model in data["models"].values():
        model["rpm"] = options.rpm or model["rpm"]
        model["tpm"] = options.tpm or model["tpm"]
    if options.budget_usd is not None:
        data["budget"]["daily_usd"] = str(options.budget_usd)
    if options.priority is not None:
        data["defaults"]["priority"] = options.priority.value
    if options.concurrency is not None:
        for settings in data["priorities"].values():
            settings["max_concurrency"] = options.concurrency
    return parse_config(data, "the local run's config (with --provider-url)")
