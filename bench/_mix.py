"""A realistic job file, as a new user would write one: prompts of 10 to 400 words,
``max_tokens`` 32 to 200, about 10% streamed, about 30% in OpenAI's batch form, spread evenly
over the four priorities (or all on the ones given). Seeded: the same arguments write the
same file. A job's ``custom_id`` starts with its priority's letter (``c``, ``h``, ``n``,
``l``), so results can be told apart by priority."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench._common import WORDS

PRIORITIES = ("critical", "high", "normal", "low")
PROMPT_WORDS = (10, 400)
MAX_TOKENS = (32, 200)
STREAMED = 0.10
BATCH_FORM = 0.30


def mix_line(
    custom_id: str,
    rng: random.Random,
    priority: str,
    *,
    model: str | None = None,
    streamed: float = STREAMED,
) -> dict[str, Any]:
    """One job: short form, or (``BATCH_FORM`` of them) a line of an OpenAI batch file;
    on ``model`` if given (else the config's default), streamed with probability
    ``streamed`` (the same draws either way: only the flag changes)."""
    words = rng.randint(*PROMPT_WORDS)
    prompt = custom_id + " " + " ".join(rng.choice(WORDS) for _ in range(words - 1))
    max_tokens = rng.randint(*MAX_TOKENS)
    stream = rng.random() < streamed
    named = {"model": model} if model else {}
    if rng.random() < BATCH_FORM:
        body: dict[str, Any] = {
            **named,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
        }
        if stream:
            body["stream"] = True
        return {
            "custom_id": custom_id,
            "priority": priority,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": body,
        }
    line: dict[str, Any] = {
        "custom_id": custom_id,
        "priority": priority,
        **named,
        "prompt": prompt,
        "max_tokens": max_tokens,
    }
    if stream:
        line["stream"] = True
    return line


def write_mix(
    path: Path,
    n: int,
    *,
    priorities: Sequence[str] = PRIORITIES,
    seed: int = 14,
    model: str | None = None,
    streamed: float = STREAMED,
) -> Path:
    """``n`` jobs, the ``i``-th on ``priorities[i % len(priorities)]``. The prompts, caps and
    forms depend on ``seed`` and ``i`` only: the same jobs on other priorities. ``model``
    and ``streamed``: as ``mix_line`` (a batch API takes no streamed request: 0 there)."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for i in range(n):
            priority = priorities[i % len(priorities)]
            line = mix_line(f"{priority[0]}{i:06d}", rng, priority, model=model, streamed=streamed)
            out.write(json.dumps(line, separators=(",", ":")) + "\n")
    return path
