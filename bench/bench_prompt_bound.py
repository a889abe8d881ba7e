"""How far the budget's prompt bound sits above what providers really render and bill.

    .venv/bin/python bench/bench_prompt_bound.py

For requests whose framing outweighs their text (``tests/unit/prompt_corpus.py``: empty
messages, one-letter names, 60 parameterless tools, 200 one-letter arguments, 40 empty
tool calls, 20 KB tool schemas, response-format schemas), the prompt tokens of every
published rendering (``tests/unit/prompt_renderers.py``: harmony with o200k and cl100k,
DeepSeek-V3.2's encoding with its tokenizer, OpenAI's cookbook recipe), the bound
(``chatbatch.core.pricing.prompt_token_bound``) and its headroom (bound / the most
rendered). Then the framing each rendering adds per element, measured as the difference
between two minimal requests, against ``BOUND_FRAMING``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))

from prompt_corpus import adversarial_requests
from prompt_renderers import counters

from chatbatch.core.pricing import prompt_token_bound


def main() -> None:
    counts = counters()
    print(f"{'request':34}" + "".join(f"{n:>16}" for n in counts) + f"{'bound':>9}{'x':>6}")
    for name, body in adversarial_requests().items():
        real = [count(body) for count in counts.values()]
        bound = prompt_token_bound(body)
        cells = "".join(f"{r:>16}" for r in real)
        print(f"{name:34}{cells}{bound:>9}{bound / max(real):>6.2f}")

    user = {"role": "user", "content": ""}
    call = {"id": "", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    pairs = {
        "request + 1 message": ({"messages": []}, {"messages": [user]}),
        "message": ({"messages": [user]}, {"messages": [user, user]}),
        "name (1 byte)": ({"messages": [user]}, {"messages": [user | {"name": "a"}]}),
        "tools (1 tool, 'f')": (
            {"messages": [user]},
            {"messages": [user], "tools": [{"type": "function", "function": {"name": "f"}}]},
        ),
        "call + result": (
            {"messages": [user]},
            {
                "messages": [
                    user,
                    {"role": "assistant", "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": "", "content": ""},
                ]
            },
        ),
        "argument ('a':1)": (
            {"messages": [user, {"role": "assistant", "tool_calls": [call]}]},
            {
                "messages": [
                    user,
                    {
                        "role": "assistant",
                        "tool_calls": [call | {"function": {"name": "f", "arguments": '{"a":1}'}}],
                    },
                ]
            },
        ),
        "json_object format": (
            {"messages": [user]},
            {"messages": [user], "response_format": {"type": "json_object"}},
        ),
    }
    print()
    print(f"{'added element':34}" + "".join(f"{n:>16}" for n in counts) + f"{'bound':>9}")
    for name, (before, after) in pairs.items():
        cells = "".join(
            f"{count(after) - (count(before) if before['messages'] else 0):>16}"
            for count in counts.values()
        )
        added = prompt_token_bound(after) - (
            prompt_token_bound(before) if before["messages"] else 0
        )
        print(f"{name:34}{cells}{added:>9}")


if __name__ == "__main__":
    main()
