"""What a local run can be told (``LocalOptions``), and the config its workers run with."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from pydantic import ValidationError

from chatbatch.core.config import Config, ConfigError, Priority, Provider, format_error
from chatbatch.local.simulator import SimulatorSettings


@dataclass
class LocalOptions:
    config_path: Path | None = None
    provider_url: str | None = None
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
    # the journal's directory: the state survives the process (None: in memory only)
    state_dir: Path | None = None
    stop_grace_s: float = 15.0  # stopped early: how long the calls in flight may finish


def effective_config(config: Config, options: LocalOptions, provider_url: str) -> Config:
    """The config the local workers run with: every provider at ``provider_url``
    (https, or plain http to loopback only: else a ``ConfigError`` naming it)."""
    try:
        Provider.model_validate({"base_url": provider_url})
    except ValidationError as err:
        raise ConfigError(f"--provider-url {provider_url}: {format_error(err)}") from None
    data = config.model_dump(mode="json")
    for provider in data["providers"].values():
        provider["base_url"] = provider_url
        provider["api_key_env"] = "CHATBATCH_API_KEY"
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
    return Config.model_validate(data)
