"""Which chat request parameters a job may carry, and why the others are refused.

The budget reserves a job's worst case before the call (``Job.worst_case_usd``): the bound
of every billed prompt field (``pricing.PROMPT_FIELDS`` and the messages) plus the output
cap sent, times ``n``. A parameter goes to the provider only if the provider cannot bill
past that worst case because of it: an allow-list (``ALLOWED``), each entry with the reason
it is safe. A parameter known to bill beyond the bound (``REFUSED``, from the OpenAI API
reference) and any parameter not on the list fail at submit, naming the field and what to
do; a parameter the list does not know might bill anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from chatbatch.core.pricing import PROMPT_FIELDS

# name -> why the provider cannot bill beyond the worst case because of it
ALLOWED: Mapping[str, str] = {
    **{name: "billed as prompt tokens and counted in the prompt bound" for name in PROMPT_FIELDS},
    "n": "every choice's output is reserved: the cap times n",
    "temperature": "sampling only",
    "top_p": "sampling only",
    "top_k": "sampling only (gateways)",
    "min_p": "sampling only (gateways)",
    "repetition_penalty": "sampling only (gateways)",
    "presence_penalty": "sampling only",
    "frequency_penalty": "sampling only",
    "logit_bias": "sampling only",
    "seed": "sampling only",
    "stop": "can only end the answer sooner",
    "logprobs": "returned with the answer, not billed",
    "top_logprobs": "returned with the answer, not billed",
    "parallel_tool_calls": "tool calls are output tokens, within the cap",
    "verbosity": "changes the length of the answer, within the cap",
    "reasoning_effort": "reasoning tokens are output tokens within max_completion_tokens",
    "user": "an identifier, not billed",
    "safety_identifier": "an identifier, not billed",
    "prompt_cache_key": "routes to the prompt cache, which only lowers the cost",
    "prompt_cache_retention": "keeps cached prompts longer, which only lowers the cost",
    "prompt_cache_options": "where prompts are cached, which only lowers the cost",
    "store": "stores the completion, not billed",
    "metadata": "tags a stored completion, not billed",
    "stream_options": "chatbatch asks for usage itself",
    "service_tier": "auto, default and flex bill at most the configured prices",
    "modalities": "text output only",
}

# name -> why it can make the provider bill beyond the worst case, and what to do
REFUSED: Mapping[str, str] = {
    "audio": "audio output is billed as audio tokens at the audio price, which the model's "
    "output_per_m does not cover; remove it (text output only)",
    "web_search_options": "web search is billed per search and adds search results to the "
    "prompt, neither of which chatbatch can bound before the call; remove it",
    "prediction": "rejected predicted tokens are billed as output on top of the answer, "
    "beyond the output cap; remove it",
    "moderation": "moderating the input and output may be billed apart from the tokens, at "
    "a price chatbatch has no setting for; remove it",
}

SERVICE_TIERS = ("auto", "default", "flex")
TOOL_TYPES = ("function", "custom")


def _modalities(value: Any) -> str | None:
    if value != ["text"]:
        return (
            'only ["text"] is accepted: audio output is billed at the audio price, which '
            "the model's output_per_m does not cover"
        )
    return None


def _service_tier(value: Any) -> str | None:
    if value not in SERVICE_TIERS:
        return (
            f"must be one of {list(SERVICE_TIERS)} (got {value!r}): another tier bills above "
            "the configured prices (input_per_m, output_per_m)"
        )
    return None


def _n(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 128:
        return f"must be an integer between 1 and 128 (got {value!r})"
    return None


def _tools(value: Any) -> tuple[str, str] | str | None:
    if not isinstance(value, list):
        return "must be a list"
    for index, tool in enumerate(value):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind not in TOOL_TYPES:
            return (
                f"[{index}].type",
                f"must be one of {list(TOOL_TYPES)} (got {kind!r}): a provider's built-in "
                "tool (search, code, files) bills per use, which chatbatch cannot bound "
                "before the call",
            )
    return None


_CHECKS: Mapping[str, Callable[[Any], tuple[str, str] | str | None]] = {
    "modalities": _modalities,
    "service_tier": _service_tier,
    "n": _n,
    "tools": _tools,
}


def refusal(name: str, value: Any) -> tuple[str, str] | None:
    """(field, why) when the parameter ``name`` with ``value`` cannot go to the provider:
    the field is ``name`` or a part of it (``tools[2].type``)."""
    if name in REFUSED:
        return name, f"not accepted: {REFUSED[name]}"
    if name not in ALLOWED:
        return name, (
            "unknown parameter: chatbatch cannot tell what the provider bills for it, so it "
            "cannot reserve the job's worst case; remove it or check its spelling"
        )
    check = _CHECKS.get(name)
    found = check(value) if check else None
    if isinstance(found, tuple):
        return name + found[0], found[1]
    return (name, found) if found else None
