"""How the simulator behaves: ``SimulatorSettings``, the fault kinds, and reading them from
admin JSON and from chatbatch.toml (the model ids accepted)."""

from __future__ import annotations

import contextlib
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from chatbatch.core.config import ConfigError, load_config


class FaultKind(StrEnum):
    """What a faulted chat request gets. Before generation (nothing generated, nothing
    billed, no tokens in the rate-limit window; the request still counts): 500, 503, 429,
    400 (a request the API refuses), ``reset``, ``hang``. After it (``GENERATED``: the
    answer is generated and billed in full, as a real provider bills a generation it
    finished, read or not): the rest."""

    error_500 = "500"
    error_503 = "503"
    rate_limited = "429"
    bad_request = "400"  # OpenAI's invalid_request_error, with its param and code
    reset = "reset"  # the connection is reset, nothing generated
    hang = "hang"  # stuck: nothing generated, the connection dropped after hang_s
    truncate = "truncate"  # half the JSON body; a stream cut before [DONE], no usage chunk
    corrupt = "corrupt"  # the JSON body cut; a stream with a broken chunk
    reset_after = "reset_after"  # generated, then reset before its first byte
    slow = "slow"  # generated, its first byte after hang_s (the client may be gone)
    no_usage = "no_usage"  # a whole, valid answer without usage (a gateway that drops it)


GENERATED = frozenset(
    {
        FaultKind.truncate,
        FaultKind.corrupt,
        FaultKind.reset_after,
        FaultKind.slow,
        FaultKind.no_usage,
    }
)
# of those, the ones whose answer arrives whole (if the client waits for it)
WHOLE = frozenset({FaultKind.slow, FaultKind.no_usage})
# what a batch line can get (``Engine.inject_batch``): no connection to reset, hang or cut,
# so a refusal (400, unbilled), a server error (unbilled; the line's response says it),
# or an answer without usage (billed)
BATCH_LINE = frozenset(
    {
        FaultKind.error_500,
        FaultKind.error_503,
        FaultKind.rate_limited,
        FaultKind.bad_request,
        FaultKind.no_usage,
    }
)


class AccountErrorKind(StrEnum):
    """An account-level error answered to every chat request for a model (OpenAI's bodies)."""

    invalid_api_key = "invalid_api_key"  # 401
    insufficient_quota = "insufficient_quota"  # 429, not a rate limit
    model_not_found = "model_not_found"  # 404


class Fault(BaseModel):
    """A fault for one coming chat request; ``retry_after_*`` become headers of a 429/503."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: FaultKind
    retry_after_s: float | None = Field(default=None, ge=0)
    retry_after_ms: int | None = Field(default=None, ge=0)


Probability = Annotated[float, Field(ge=0, le=1)]
# OpenAI's reasoning model families: a request with max_tokens is refused (400)
COMPLETION_TOKENS_ONLY = ("o1", "o3", "o4-mini", "gpt-5")


class ReasoningUsage(StrEnum):
    """Where a thinking model's usage reports its reasoning tokens."""

    inside = "inside"  # OpenAI, DeepSeek: in completion_tokens; total = prompt + completion
    outside = "outside"  # some gateways: not in completion_tokens; total_tokens holds them


class Reasoning(BaseModel):
    """A model that thinks: each answer first spends ``tokens`` reasoning tokens, inside
    the request's output cap (the visible answer gets what is left), billed as output."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tokens: int = Field(ge=1, le=100_000)
    usage: ReasoningUsage = ReasoningUsage.inside


class SimulatorSettings(BaseModel):
    """How the simulator behaves. Every field can change at run time (``configure``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    api_key: str | None = Field(default=None, repr=False, description="None: no auth")
    models: list[str] = Field(default_factory=list, description="accepted model ids")
    config_models: bool = Field(default=True, description="also accept chatbatch.toml's ids")
    rpm: int | None = Field(default=None, gt=0, description="requests per minute per model")
    tpm: int | None = Field(default=None, gt=0, description="tokens per minute per model")
    per_second: bool = Field(
        default=False,
        description="also enforce rpm and tpm over every rolling second, as their sixtieth "
        "(600/min as 10 per second), as OpenAI may enforce a minute's limit",
    )
    latency_ms: float = Field(default=0, ge=0, description="before the first byte")
    per_token_ms: float = Field(default=0, ge=0, description="per output token")
    answer_tokens: int = Field(default=24, ge=4, le=100_000)
    open_answer_tokens: int = Field(
        default=8192,
        ge=4,
        le=200_000,
        description="the answer's length when a request carries no output cap: the "
        "model's own limit, as a real provider applies it to an open question",
    )
    completion_tokens_only: list[str] = Field(
        default_factory=lambda: list(COMPLETION_TOKENS_ONLY),
        description="model ids (or their prefix before '-') that refuse max_tokens and "
        "take only max_completion_tokens, as OpenAI's reasoning models do",
    )
    seed: int = 0
    fault_rates: dict[FaultKind, Probability] = Field(default_factory=dict)
    hang_s: float = Field(
        default=30, gt=0, description="a hang lasts this long, then drops; a slow answer's wait"
    )
    outage_at_s: float | None = Field(default=None, ge=0, description="after start")
    outage_s: float = Field(default=0, ge=0)
    keepalive: bool = Field(default=True, description="': keep-alive' opens each stream")
    stream_chunk_tokens: int = Field(default=1, ge=1)
    write_bytes: int | None = Field(default=None, ge=1, description="split stream writes")
    null_usage_choices: bool = Field(default=False, description="usage chunk: choices null")
    account_errors: dict[str, AccountErrorKind] = Field(
        default_factory=dict,
        description="model id ('*': every model) -> the account error its requests get",
    )
    reasoning: dict[str, Reasoning] = Field(
        default_factory=dict, description="by model id: the models that think, and how"
    )
    keep_bodies: bool = Field(
        default=False,
        description="keep every chat request body received, in order (``Stats.bodies``): "
        "what the client really sent",
    )
    batch_turnaround_s: float = Field(
        default=1.0,
        ge=0,
        description="batch APIs: from a batch's start to its last line answered; line i of "
        "n is answered at (i + 1) / n of it, so a cancel or an expiry part-way leaves part "
        "done (the providers' own turnaround is minutes to 24 h)",
    )
    batch_finalize_s: float = Field(
        default=0.0, ge=0, description="batch APIs: how long an OpenAI batch stays finalizing"
    )
    batch_cancel_s: float = Field(
        default=0.0,
        ge=0,
        description="batch APIs: how long a cancel stays cancelling / canceling before the "
        "batch ends (no line is answered meanwhile)",
    )
    batch_expire_after_s: float = Field(
        default=86_400.0,
        gt=0,
        description="batch APIs: a batch not ended this long after its creation expires "
        "(its lines not answered yet expire, unbilled); the providers' window is 24 h",
    )

    @model_validator(mode="after")
    def _rates(self) -> SimulatorSettings:
        total = sum(self.fault_rates.values())
        if total > 1:
            raise ValueError(f"fault_rates add up to {total:g}; at most 1 is allowed")
        return self


def as_fault(value: Any) -> Fault:
    return Fault(kind=FaultKind(value)) if isinstance(value, str) else Fault.model_validate(value)


def takes_only_completion_tokens(
    settings: SimulatorSettings, model: str, reasoning_ids: frozenset[str] = frozenset()
) -> bool:
    """Whether ``model`` (an id like ``o3-2025-04-16`` or ``gpt-5-mini``) is of a family
    that refuses ``max_tokens``, or one chatbatch.toml marks ``reasoning = true``."""
    return model in reasoning_ids or any(
        model == family or model.startswith(family + "-")
        for family in settings.completion_tokens_only
    )


def config_reasoning_models(settings: SimulatorSettings) -> frozenset[str]:
    """The model ids chatbatch.toml marks ``reasoning = true`` (they refuse max_tokens)."""
    if not settings.config_models:
        return frozenset()
    with contextlib.suppress(ConfigError):
        return frozenset(m.model_id for m in load_config().models.values() if m.reasoning)
    return frozenset()


def known_models(settings: SimulatorSettings) -> frozenset[str]:
    """Accepted model ids; empty means any."""
    ids = set(settings.models)
    if settings.config_models:
        with contextlib.suppress(ConfigError):
            ids |= {m.model_id for m in load_config().models.values()}
    return frozenset(ids)
