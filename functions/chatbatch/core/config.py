"""chatbatch.toml -> typed, validated settings.

One file is read by the CLI, the worker (the file ships in the Lambda asset and
``CHATBATCH_CONFIG`` points at it) and the CDK app. Every error names the key, the
value and what is allowed, so a typo never turns into a silent default.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
import tomllib
from decimal import ROUND_CEILING, Decimal
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    ValidationError,
    field_validator,
    model_validator,
)

from chatbatch.core.principals import DEPLOYER, PRODUCER_ARN_PATTERN

CONFIG_ENV = "CHATBATCH_CONFIG"
CONFIG_FILENAME = "chatbatch.toml"


class ConfigError(ValueError):
    """A config file that cannot be used. The message says where and what to do."""


class Priority(StrEnum):
    critical = "critical"
    high = "high"
    normal = "normal"
    low = "low"

    @property
    def rank(self) -> int:
        """0 for the most urgent."""
        return list(Priority).index(self)


PositiveFloat = Annotated[float, Field(gt=0)]
Money = Annotated[Decimal, Field(ge=0, max_digits=12, decimal_places=6)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Strict):
    connect_s: PositiveFloat = 5.0
    read_s: PositiveFloat = 120.0
    write_s: PositiveFloat = 30.0
    pool_s: PositiveFloat = 10.0
    total_s: PositiveFloat = 600.0

    @model_validator(mode="after")
    def _total_covers_read(self) -> Timeouts:
        if self.total_s < self.connect_s:
            raise ValueError(
                f"total_s ({self.total_s}) must be at least connect_s ({self.connect_s})"
            )
        return self


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a URL's host: a name, an IPv4 or a bracketed IPv6 address) is
    this machine: ``localhost`` or an address in 127.0.0.0/8 or ::1."""
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


ANTHROPIC_CACHE_WRITE_FACTOR = Decimal("1.25")  # a 5-minute cache write, times the input price
ANTHROPIC_CACHE_WRITE_1H_FACTOR = Decimal(2)  # a 1-hour cache write, times the input price


ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


def default_key_env(provider: str) -> str:
    """The variable a provider's key is read from when it names no ``api_key_env``:
    its name upper-cased, every other character than a letter or digit as ``_``
    (``my-gateway`` -> ``MY_GATEWAY_API_KEY``)."""
    return "".join(c if c.isalnum() else "_" for c in provider.upper()) + "_API_KEY"


class Provider(_Strict):
    """An endpoint and where its API key comes from: an OpenAI-compatible
    ``/chat/completions`` (``kind = "openai"``) or Anthropic's own ``/messages``
    (``kind = "anthropic"``: ``x-api-key`` and ``anthropic-version`` headers)."""

    base_url: HttpUrl
    kind: Literal["openai", "anthropic"] = Field(
        default="openai",
        description="the API the endpoint speaks: openai (/chat/completions) or anthropic "
        "(/messages); jobs are written in OpenAI's form either way",
    )
    anthropic_version: str = Field(
        default="2023-06-01",
        pattern=r"^\d{4}-\d{2}-\d{2}$",
        description="the anthropic-version header a kind anthropic provider is sent",
    )
    api_key_env: str | None = Field(
        default=None,
        pattern=ENV_NAME_PATTERN,
        description="environment variable holding the key when running locally; unset: "
        "<NAME>_API_KEY (the provider's name upper-cased, see Config.key_env); no two "
        "providers may read the same variable unless they share the base_url",
    )
    secret_arn: str | None = Field(
        default=None,
        pattern=r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:.+$",
        description="existing Secrets Manager secret; the stack creates one if unset",
    )
    timeouts: Timeouts = Timeouts()
    max_connections: int = Field(default=20, ge=1, le=1000)

    @field_validator("base_url")
    @classmethod
    def _tls_unless_loopback(cls, url: HttpUrl) -> HttpUrl:
        if url.scheme == "http" and not is_loopback(url.host or ""):
            raise ValueError(
                f"plain http:// sends the API key unencrypted; it is allowed only to this "
                f"machine (127.0.0.0/8, ::1, localhost), not to {url.host!r}: use https://, or "
                "run the gateway on loopback"
            )
        return url

    @property
    def chat_url(self) -> str:
        return str(self.base_url).rstrip("/") + "/chat/completions"

    @property
    def messages_url(self) -> str:
        """Anthropic's Messages endpoint under ``base_url`` (kind anthropic)."""
        return str(self.base_url).rstrip("/") + "/messages"

    @property
    def url(self) -> str:
        """Where a job's request goes: the endpoint of the provider's kind."""
        return self.messages_url if self.kind == "anthropic" else self.chat_url


# each batch price key and the synchronous price it may not exceed
BATCH_PRICES = {
    "batch_input_per_m": "input_per_m",
    "batch_cached_input_per_m": "cached_input_per_m",
    "batch_output_per_m": "output_per_m",
}
PRICE_STEP = Decimal("0.000001")  # the finest price a config can give (Money's 6 decimals)


def _price_up(value: Decimal) -> Decimal:
    """A derived price on the config's 6-decimal grid, rounded up: never under-counts."""
    return value.quantize(PRICE_STEP, rounding=ROUND_CEILING)


class Model(_Strict):
    """A model as the pipeline sees it: who serves it, what it costs, how fast it may go."""

    provider: str
    model_id: str = Field(min_length=1)
    input_per_m: Money
    cached_input_per_m: Money
    output_per_m: Money
    cache_write_per_m: Money | None = Field(
        default=None,
        description="the price of prompt tokens written to the cache (Anthropic bills a "
        "5-minute write at 1.25x input_per_m); required at a kind anthropic provider, "
        "refused at an openai one (no cache-write price there)",
    )
    cache_write_1h_per_m: Money | None = Field(
        default=None,
        description="the price of prompt tokens written to the 1-hour cache (a block marked "
        'cache_control.ttl = "1h"; Anthropic bills it at 2x input_per_m); required with '
        "cache_write_per_m at a kind anthropic provider, refused at an openai one",
    )
    prices_as_of: dt.date
    rpm: int = Field(gt=0, description="requests per minute")
    tpm: int = Field(gt=0, description="tokens per minute (prompt + completion)")
    burst_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="the shortest period the provider may enforce rpm over (OpenAI: 600/min "
        "as 10 per second): a worker process sends at most rpm x burst_s / 60 requests in "
        "any burst_s, however late its sends wake",
    )
    max_output_tokens: int = Field(gt=0)
    default_max_tokens: int | None = Field(default=None, gt=0)
    output_cap_param: Literal["max_tokens", "max_completion_tokens"] = Field(
        default="max_tokens",
        description="the request parameter a call that gives no cap is capped with; OpenAI's "
        "reasoning models (o-series, gpt-5) accept only max_completion_tokens",
    )
    reasoning: bool = Field(
        default=False,
        description="an OpenAI reasoning model (o-series, gpt-5): it refuses max_tokens, so "
        "a job that gives max_tokens is refused at submit and the default cap is sent as "
        "max_completion_tokens",
    )
    image_input_tokens: int | None = Field(
        default=None,
        gt=0,
        description="the most prompt tokens one image_url content part can bill at this "
        "model; unset: image parts are refused (chatbatch could not bound them)",
    )
    batch_api: Literal["openai", "anthropic"] | None = Field(
        default=None,
        description="the provider's own batch API jobs that can wait go through (openai: "
        "Files + Batches; anthropic: Message Batches); it must match the provider's kind. "
        "None: no batch route for this model",
    )
    batch_input_per_m: Money | None = Field(
        default=None, description="the batch API's input price; required with batch_api"
    )
    batch_cached_input_per_m: Money | None = Field(
        default=None, description="the batch API's cached input price; required with batch_api"
    )
    batch_output_per_m: Money | None = Field(
        default=None, description="the batch API's output price; required with batch_api"
    )

    @model_validator(mode="after")
    def _batch_prices(self) -> Model:
        """The batch prices come with ``batch_api`` and only with it, none above its
        synchronous twin (a batch route that cost more would never be worth routing)."""
        for key, sync in BATCH_PRICES.items():
            price = getattr(self, key)
            if self.batch_api is None and price is not None:
                raise ValueError(
                    f"{key} ({price}) is set but batch_api is not: a batch price needs a "
                    'batch route; set batch_api ("openai" or "anthropic") or remove it'
                )
            if self.batch_api is not None and price is None:
                raise ValueError(
                    f"{key}: required with batch_api = {self.batch_api!r} (the batch API's "
                    f"price per 1M tokens, at most {sync} = {getattr(self, sync)})"
                )
            if price is not None and price > getattr(self, sync):
                raise ValueError(
                    f"{key} ({price}) cannot exceed {sync} ({getattr(self, sync)}): the "
                    "batch route is never dearer than the synchronous one"
                )
        return self

    @model_validator(mode="after")
    def _consistent(self) -> Model:
        if self.cached_input_per_m > self.input_per_m:
            raise ValueError(
                f"cached_input_per_m ({self.cached_input_per_m}) cannot exceed "
                f"input_per_m ({self.input_per_m})"
            )
        if self.default_max_tokens and self.default_max_tokens > self.max_output_tokens:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) cannot exceed "
                f"max_output_tokens ({self.max_output_tokens})"
            )
        return self

    @property
    def cache_write_price(self) -> Decimal:
        """The price per 1M prompt tokens written to the cache (input_per_m if unset)."""
        return self.input_per_m if self.cache_write_per_m is None else self.cache_write_per_m

    @property
    def cache_write_1h_price(self) -> Decimal:
        """The price per 1M prompt tokens written to the 1-hour cache (the 5-minute write's
        price if unset: only a kind openai model leaves it unset, which writes none)."""
        return self.cache_write_1h_per_m or self.cache_write_price

    @property
    def cap_param(self) -> Literal["max_tokens", "max_completion_tokens"]:
        """The parameter a call without its own cap is capped with: a reasoning model's is
        max_completion_tokens, whatever ``output_cap_param`` says."""
        return "max_completion_tokens" if self.reasoning else self.output_cap_param

    def batch_priced(self) -> Model:
        """This model at its batch prices (``cost`` and ``Job.worst_case_usd`` take it as
        they take the model): input, cached input and output from the ``batch_*`` keys, the
        cache writes scaled as the input price is (Anthropic's cache multipliers apply to
        the batch price), rounded up to the sixth decimal. Raises ValueError for a model
        without ``batch_api``."""
        if self.batch_input_per_m is None or self.batch_api is None:
            raise ValueError(f"model {self.model_id!r} has no batch_api: no batch prices")
        ratio = self.batch_input_per_m / self.input_per_m if self.input_per_m else Decimal(1)
        scaled = {
            key: _price_up(value * ratio)
            for key in ("cache_write_per_m", "cache_write_1h_per_m")
            if (value := getattr(self, key)) is not None
        }
        return self.model_copy(
            update={
                "input_per_m": self.batch_input_per_m,
                "cached_input_per_m": self.batch_cached_input_per_m,
                "output_per_m": self.batch_output_per_m,
                **scaled,
            }
        )

    @property
    def reserve_max_tokens(self) -> int:
        """The output cap a job that gives none is sent (and reserved): never the
        provider's own, which may be far larger."""
        return self.default_max_tokens or self.max_output_tokens


class Budget(_Strict):
    daily_usd: Money = Decimal("200")
    batch_usd: Money | None = None
    request_cap_usd: Money = Decimal("1")
    reservation_ttl_s: int = Field(default=900, ge=60)


class PrioritySettings(_Strict):
    max_concurrency: int = Field(default=2, ge=2, le=1000)
    share: float = Field(gt=0, le=1, description="share of the rate limit under contention")
    deadline_h: float = Field(
        default=0,
        ge=0,
        allow_inf_nan=False,
        description="hours a job of this priority may take when its line gives no "
        "deadline_h; 0: as soon as possible. At 24 or more its jobs may go through a "
        "provider's batch API (core/routing.py)",
    )


class Role(_Strict):
    model: str
    system_prompt: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("params")
    @classmethod
    def _known_params(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - ROLE_PARAMS)
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown}; allowed: {sorted(ROLE_PARAMS)}")
        return value


ROLE_PARAMS = frozenset(
    {
        "temperature",
        "top_p",
        "max_tokens",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "response_format",
        "seed",
        "stream",
    }
)


class Retries(_Strict):
    max_attempts: int = Field(default=5, ge=1, le=20)
    base_s: PositiveFloat = 0.5
    max_backoff_s: PositiveFloat = 30.0
    max_retry_after_s: PositiveFloat = 60.0

    @model_validator(mode="after")
    def _ordered(self) -> Retries:
        if self.base_s > self.max_backoff_s:
            raise ValueError(
                f"base_s ({self.base_s}) cannot exceed max_backoff_s ({self.max_backoff_s})"
            )
        return self


# Jobs per invocation: one group commit holds each job's two items and the shared ones in
# DynamoDB's 100 items per transaction (larger groups are split: worker/finals.py)
MAX_BATCH_SIZE = 100


class Worker(_Strict):
    architecture: Literal["arm64", "x86_64"] = "arm64"
    runtime: Literal["3.12", "3.13"] = "3.12"
    memory_mb: int = Field(default=512, ge=128, le=10240)
    timeout_s: int = Field(default=120, ge=10, le=900)
    batch_size: int = Field(
        default=10,
        ge=1,
        le=MAX_BATCH_SIZE,
        description="jobs per invocation; above 10 the queues need batch_window_s >= 1",
    )
    batch_window_s: int = Field(default=1, ge=0, le=300)
    max_receive_count: int = Field(default=5, ge=1, le=1000)
    retention_days: int = Field(default=4, ge=2, le=14)
    log_prompts: bool = False
    max_throttle_wait_s: float = Field(default=10, ge=0, le=60)
    max_handbacks: int = Field(
        default=1000,
        ge=0,
        description="hand-backs before a job expires: a 2-day budget deferral takes 192 "
        "(one per 15 minutes), 3 days 288; the rest is room for throttling hand-backs",
    )
    max_job_age_s: int = Field(
        default=3 * 86400,
        ge=1,
        description="a job first sent longer ago than this expires at its next hand-back",
    )

    @model_validator(mode="after")
    def _window_for_big_batches(self) -> Worker:
        if self.batch_size > 10 and self.batch_window_s < 1:
            raise ValueError(
                f"batch_size {self.batch_size} needs batch_window_s >= 1: SQS hands Lambda "
                "more than 10 messages only within a batching window"
            )
        return self

    @model_validator(mode="after")
    def _age_within_retention(self) -> Worker:
        if self.max_job_age_s > self.retention_days * 86400:
            raise ValueError(
                f"max_job_age_s ({self.max_job_age_s}) must be within the queues' retention "
                f"(retention_days {self.retention_days} = {self.retention_days * 86400} s)"
            )
        return self


class Defaults(_Strict):
    model: str
    priority: Priority = Priority.normal
    cache_temperature_zero: bool = False


class Limits(_Strict):
    max_line_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)


class Security(_Strict):
    producers: list[Annotated[str, Field(pattern=f"{PRODUCER_ARN_PATTERN}|^{DEPLOYER}$")]] = Field(
        default=[DEPLOYER],
        min_length=1,
        description="who may send to the queues (IAM role or user ARNs; 'deployer': the "
        "identity that deploys); the worker's own role is always allowed",
    )


EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
EVENT_BUS_PATTERN = r"^[A-Za-z0-9._\-/]{1,256}$"


class Events(_Strict):
    """The "Batch Completed" event (EventBridge) and its optional e-mail (SNS)."""

    enabled: bool = True
    bus: str = Field(
        default="default",
        pattern=EVENT_BUS_PATTERN,
        description="the EventBridge bus the worker puts the event on (its name)",
    )
    email: str | None = Field(
        default=None,
        pattern=EMAIL_PATTERN,
        description="an address subscribed (SNS e-mail) to every Batch Completed event",
    )


class Scale(_Strict):
    target_jobs_per_s: PositiveFloat | None = Field(
        default=None,
        description="jobs/s the deployment must take with no DynamoDB item above half its "
        "write limit: the hot items (the day's and a batch's budget ledger, the open "
        "reservation markers, a batch's counters, each model's limiter) get as many shards "
        "as that needs (core/scale.py). None: one item each, the cheapest below ~1,000 jobs/s",
    )
    answer_s: PositiveFloat = Field(
        default=5.0,
        description="the typical provider answer time (seconds) used to size the worker's "
        "concurrency for target_jobs_per_s (core/sizing.py): an invocation lasts about one "
        "answer, since its jobs run concurrently",
    )


class Config(_Strict):
    stack_name: str = Field(default="chatbatch", pattern=r"^[A-Za-z][A-Za-z0-9-]{0,127}$")
    defaults: Defaults
    providers: dict[str, Provider] = Field(min_length=1)
    models: dict[str, Model] = Field(min_length=1)
    budget: Budget = Budget()
    priorities: dict[Priority, PrioritySettings]
    roles: dict[str, Role] = Field(default_factory=dict)
    retries: Retries = Retries()
    worker: Worker = Worker()
    limits: Limits = Limits()
    security: Security = Security()
    events: Events = Events()
    scale: Scale = Scale()

    @model_validator(mode="after")
    def _references(self) -> Config:
        for name, model in self.models.items():
            if model.provider not in self.providers:
                raise ValueError(
                    f"models.{name}.provider: {model.provider!r} is not a provider; "
                    f"defined: {sorted(self.providers)}"
                )
            _check_cache_write(name, model, self.providers[model.provider])
            _check_batch_api(name, model, self.providers[model.provider])
        for name, role in self.roles.items():
            if role.model not in self.models:
                raise ValueError(
                    f"roles.{name}.model: {role.model!r} is not a model; "
                    f"defined: {sorted(self.models)}"
                )
        _check_key_envs(self)
        if self.defaults.model not in self.models:
            raise ValueError(
                f"defaults.model: {self.defaults.model!r} is not a model; "
                f"defined: {sorted(self.models)}"
            )
        if self.budget.reservation_ttl_s <= self.worker.timeout_s:
            raise ValueError(
                f"budget.reservation_ttl_s ({self.budget.reservation_ttl_s}) must be longer "
                f"than worker.timeout_s ({self.worker.timeout_s}): a live worker's "
                "reservation must never be reclaimed"
            )
        missing = [p.value for p in Priority if p not in self.priorities]
        if missing:
            raise ValueError(f"priorities: missing {missing}; all four must be configured")
        total = sum(p.share for p in self.priorities.values())
        if total > 1.0 + 1e-9:
            shares = ", ".join(f"{k.value} {v.share:g}" for k, v in self.priorities.items())
            raise ValueError(
                f"priorities: the shares add up to {total:g} ({shares}); at most 1 is allowed"
            )
        return self

    @cached_property
    def model_for_id(self) -> dict[str, str]:
        """Provider model id -> configured model name (jobs may use either)."""
        return {m.model_id: name for name, m in self.models.items()}

    def resolve_model(self, name: str) -> tuple[str, Model] | None:
        key = name if name in self.models else self.model_for_id.get(name)
        return (key, self.models[key]) if key else None

    def provider_of(self, model: str) -> Provider:
        return self.providers[self.models[model].provider]

    def key_env(self, provider: str) -> str:
        """The environment variable provider ``provider``'s key is read from locally: its
        ``api_key_env``, else ``<NAME>_API_KEY`` (``default_key_env``)."""
        return self.providers[provider].api_key_env or default_key_env(provider)


def _check_key_envs(config: Config) -> None:
    """Every provider reads its key from a variable of its own: two that read the same
    one would send one provider's key to the other's URL. Providers at the same
    ``base_url`` may share one (a local run sends every provider to one endpoint with
    one key, ``CHATBATCH_API_KEY``): the key then goes nowhere else."""
    readers: dict[str, str] = {}
    for name, provider in config.providers.items():
        env = config.key_env(name)
        if re.fullmatch(ENV_NAME_PATTERN, env) is None:
            raise ValueError(
                f"providers.{name}.api_key_env: unset, and the default {env!r} (the name "
                "upper-cased + _API_KEY) is not a variable name; set api_key_env"
            )
        other = readers.setdefault(env, name)
        if other != name and config.providers[other].base_url != provider.base_url:
            raise ValueError(
                f"providers {other!r} and {name!r} both read their API key from {env} "
                f"(api_key_env, unset: <NAME>_API_KEY), so one's key would be sent to the "
                f"other's URL ({config.providers[other].base_url} and {provider.base_url}); "
                "give each provider its own api_key_env"
            )


def _check_cache_write(name: str, model: Model, provider: Provider) -> None:
    """Anthropic bills cache writes at their own prices (5-minute and 1-hour);
    OpenAI-compatible APIs do not."""
    for key, factor, what in _CACHE_WRITE_PRICES:
        if provider.kind == "anthropic" and getattr(model, key) is None:
            suggested = (model.input_per_m * factor).normalize()
            raise ValueError(
                f"models.{name}.{key}: required, provider {model.provider!r} is kind "
                f"anthropic, which bills prompt tokens written to the cache at their own "
                f"price; set it ({what} is {factor} x input_per_m = {suggested:f})"
            )
        if provider.kind == "openai" and getattr(model, key) is not None:
            raise ValueError(
                f"models.{name}.{key}: provider {model.provider!r} is kind openai, "
                "which bills no cache writes (cached prompt tokens are priced by "
                'cached_input_per_m); remove it, or set kind = "anthropic" on the provider'
            )


def _check_batch_api(name: str, model: Model, provider: Provider) -> None:
    """A model's batch API is its provider's own: OpenAI's Files + Batches speak the
    OpenAI form, Anthropic's Message Batches the Messages one, at the provider's URL."""
    if model.batch_api is not None and model.batch_api != provider.kind:
        raise ValueError(
            f"models.{name}.batch_api: {model.batch_api!r} does not match provider "
            f"{model.provider!r}, which is kind {provider.kind!r} (its requests go to "
            f"{provider.url}); a model's batch API is its provider's own: set batch_api = "
            f'"{provider.kind}" if that provider has one, or remove it'
        )


# a cache-write price key, Anthropic's factor over input_per_m, the write it prices
_CACHE_WRITE_PRICES = (
    ("cache_write_per_m", ANTHROPIC_CACHE_WRITE_FACTOR, "a 5-minute write"),
    ("cache_write_1h_per_m", ANTHROPIC_CACHE_WRITE_1H_FACTOR, 'a 1-hour write (ttl "1h")'),
)


def format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        value = e.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}{shown}" if loc else msg)
    return "; ".join(lines)


def parse_config(data: dict[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}: {format_error(err)}") from None


def find_config(path: str | os.PathLike[str] | None = None) -> Path:
    """The explicit path, else $CHATBATCH_CONFIG, else ./chatbatch.toml."""
    candidate = path or os.environ.get(CONFIG_ENV) or CONFIG_FILENAME
    resolved = Path(candidate)
    if not resolved.is_file():
        raise ConfigError(
            f"{resolved}: config file not found; pass --config PATH, set {CONFIG_ENV}, "
            f"or run from the directory holding {CONFIG_FILENAME}"
        )
    return resolved


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read a TOML config (or the JSON the local runtime writes for its workers)."""
    resolved = find_config(path)
    text = resolved.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if resolved.suffix == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{resolved}: not valid {resolved.suffix[1:].upper()}: {err}") from None
    return parse_config(data, str(resolved))
